"""Run hypercorn with N workers, with or without stek.contrib.hypercorn.Config.

usage: hypercorn_main.py PORT CERT KEY WORKERS stek|plain
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from hypercorn.config import Config as PlainConfig
    from hypercorn.run import run

    import stek.contrib.hypercorn

    port, cert, key, workers, mode = sys.argv[1:6]
    config = stek.contrib.hypercorn.Config() if mode == "stek" else PlainConfig()
    config.application_path = "hypercorn_app:app"
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = cert, key
    config.workers = int(workers)
    config.loglevel = "INFO"
    print(f"starting {workers} workers", flush=True)
    sys.exit(run(config))
