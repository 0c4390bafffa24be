"""A standalone TLS server process with stek installed on a shared store.

usage: stek_server.py CERT KEY STORE_URL [rotate]

Prints ``ready PORT`` once listening on 127.0.0.1.  Each connection: full or
resumed handshake, read one line, answer one JSON line (pid, whether the
session was resumed, the callback's counters, the ring generation), close.
"""

from __future__ import annotations

import socket
import ssl
import sys

from line_server import reply, serve

import stek


def main() -> None:
    cert, key, store = sys.argv[1:4]
    rotate = len(sys.argv) > 4 and sys.argv[4] == "rotate"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    inst = stek.install(ctx, store, rotate=rotate)
    srv = socket.create_server(("127.0.0.1", 0))
    print(f"ready {srv.getsockname()[1]}", flush=True)
    serve(srv, ctx, lambda tls: reply(inst, tls), [])


if __name__ == "__main__":
    main()
