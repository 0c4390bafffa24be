"""A standalone TLS server process with stek installed on a shared store.

usage: stek_server.py CERT KEY STORE_URL [rotate]

Prints ``ready PORT`` once listening on 127.0.0.1.  Each connection: full or
resumed handshake, read one line, answer one JSON line (pid, whether the
session was resumed, the callback's counters, the ring generation), close.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import ssl
import sys
import threading

import stek


def main() -> None:
    cert, key, store = sys.argv[1:4]
    rotate = len(sys.argv) > 4 and sys.argv[4] == "rotate"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    inst = stek.install(ctx, store, rotate=rotate)
    srv = socket.create_server(("127.0.0.1", 0))
    print(f"ready {srv.getsockname()[1]}", flush=True)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)
                reply = {
                    "pid": os.getpid(),
                    "reused": tls.session_reused,
                    "counters": dataclasses.asdict(inst.counters),
                    "generation": inst.ring.generation,
                }
                tls.sendall(json.dumps(reply).encode() + b"\n")
        except (ssl.SSLError, OSError) as exc:
            print(f"connection error: {exc!r}", file=sys.stderr, flush=True)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
