"""The exchange of the line servers of these tests (fleet_server.py, stek_server.py).

Each connection: a full or resumed handshake, one line read, one JSON line
answered, closed.  Imported by the servers beside it (run as scripts, they
have this folder first on ``sys.path``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

import stek


def reply(inst: stek.Installation, tls: ssl.SSLSocket) -> dict[str, Any]:
    """The answer's common part: pid, whether the session was resumed, the
    callback's counters and the generation of the ring it serves."""
    return {
        "pid": os.getpid(),
        "reused": tls.session_reused,
        "counters": dataclasses.asdict(inst.counters),
        "generation": inst.ring.generation,
    }


def serve(srv: socket.socket, ctx: ssl.SSLContext,
          answer: Callable[[ssl.SSLSocket], dict[str, Any]], failures: list[str]) -> None:
    """Accept on ``srv`` forever, each connection in a thread of its own: handshake
    under ``ctx``, read a line, send ``answer(tls)`` as a JSON line.  A connection
    that fails is appended to ``failures`` and printed on stderr."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)
                tls.sendall(json.dumps(answer(tls)).encode() + b"\n")
        except (ssl.SSLError, OSError) as exc:
            failures.append(repr(exc))
            print(f"connection error: {exc!r}", file=sys.stderr, flush=True)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
