"""A TLS server process with stek installed on a fleet store (for the fleet tests).

usage: python fleet_server.py CERT KEY STORE_URL

The KEK comes from the environment ($STEK_KEK_FILE), as for any integration.
Prints ``ready PORT`` once listening on 127.0.0.1.  Each connection: full or
resumed handshake, read one line, answer one JSON line (pid, resumed or not,
the callback's counters, the generation of the snapshot it serves), close.
Exits when its stdin closes.

With ``FLEET_SERVER_USER=USER:GROUP`` it loads the certificate as root, then
drops to that user and group (as a pre-fork server's workers do) and installs
as the gunicorn and uvicorn hooks do (:class:`stek.contrib.PerProcessContext`,
with ``$STEK_STORE`` = STORE_URL): every file stek opens, it opens as USER.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
from typing import Any

from line_server import reply, serve

import stek


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cert, key, url = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    run_as = os.environ.get("FLEET_SERVER_USER")
    inst = _as_worker(ctx, url, *run_as.split(":")) if run_as else stek.install(ctx, url)
    srv = socket.create_server(("127.0.0.1", 0))
    failures: list[str] = []

    def answer(tls: ssl.SSLSocket) -> dict[str, Any]:
        return {**reply(inst, tls), "keys": [k.name.hex() for k in inst.ring.keys],
                "failures": failures}

    threading.Thread(target=serve, args=(srv, ctx, answer, failures), daemon=True).start()
    print(f"ready {srv.getsockname()[1]}", flush=True)
    sys.stdin.read()  # until the test closes our stdin


def _as_worker(ctx: ssl.SSLContext, url: str, user: str, group: str) -> stek.Installation:
    import grp
    import pwd

    # Imported while the interpreter's own files are still readable (root's).
    import stek.contrib.gunicorn
    import stek.mirror
    import stek.stores._filewatch

    os.setgroups([])
    os.setgid(grp.getgrnam(group).gr_gid)
    os.setuid(pwd.getpwnam(user).pw_uid)
    os.environ["STEK_STORE"] = url
    stek.contrib.gunicorn.ssl_context(None, lambda: ctx)
    inst = stek.contrib.gunicorn.installation()
    assert inst is not None
    print(f"running as uid {os.getuid()} gid {os.getgid()}", file=sys.stderr, flush=True)
    return inst


if __name__ == "__main__":
    main()
