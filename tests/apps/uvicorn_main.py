"""Run uvicorn with N workers, with or without stek's ssl_context_factory.

usage: uvicorn_main.py PORT CERT KEY WORKERS stek|plain [MODULE:APP]

MODULE:APP is the app's import string (default asgi_app:app).

uvicorn has no command-line flag for ssl_context_factory, so this is how a
deployment wires it: uvicorn.run() with an import string (needed for
workers > 1) and the module-level factory, which pickles by reference into
the spawned workers.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    import uvicorn

    import stek.contrib.uvicorn

    port, cert, key, workers, mode = sys.argv[1:6]
    uvicorn.run(
        sys.argv[6] if len(sys.argv) > 6 else "asgi_app:app",
        host="127.0.0.1",
        port=int(port),
        workers=int(workers),
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_context_factory=(stek.contrib.uvicorn.ssl_context_factory
                             if mode == "stek" else None),
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        log_level="info",
        access_log=False,
    )
