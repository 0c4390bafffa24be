"""Real TLS peers for tests: an in-process server, a Python client, openssl s_client."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers.programs import find_program


class TLSServer:
    """A threaded TLS server on 127.0.0.1: handshake, echo one line, close.

    ``errors`` collects handshake failures (a full handshake that fails is a
    bug in any stek test); ``peercerts`` records what ``getpeercert()`` gave.
    """

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.errors: list[str] = []
        self.peercerts: list[dict | None] = []
        self.handshakes = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TLSServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._stop:
                conn.close()
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                self.peercerts.append(tls.getpeercert())
                data = tls.recv(1024)
                if data:
                    tls.sendall(b"resumed=%d\n" % tls.session_reused)
        except (ssl.SSLError, OSError) as exc:
            # Clients that close right after the handshake are fine.
            if "EOF" not in str(exc) and "reset" not in str(exc).lower():
                self.errors.append(repr(exc))


@dataclass
class Result:
    reused: bool
    session: ssl.SSLSession | None
    version: str | None


def connect(port: int, cctx: ssl.SSLContext, session: ssl.SSLSession | None = None,
            host: str = "127.0.0.1") -> Result:
    """One full round trip (so TLS 1.3 tickets arrive); returns what the client saw."""
    with socket.create_connection((host, port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(b"hi\n")
        tls.recv(1024)
        return Result(tls.session_reused, tls.session, tls.version())


def reconnects(port: int, cctx: ssl.SSLContext, n: int) -> int:
    """Connect once, then n times with the latest session; count resumptions."""
    session = connect(port, cctx).session
    resumed = 0
    for _ in range(n):
        r = connect(port, cctx, session)
        resumed += r.reused
        session = r.session
    return resumed


def s_client(port: int, version: ssl.TLSVersion, workdir: Path, *, sess_in: Path | None = None,
             sess_out: Path | None = None, ca: Path | None = None,
             extra: tuple[str, ...] = ()) -> str:
    """Run ``openssl s_client`` once and return its output (stdout + stderr)."""
    exe = find_program("openssl")
    flag = "-tls1_3" if version == ssl.TLSVersion.TLSv1_3 else "-tls1_2"
    cmd = [exe, "s_client", "-connect", f"127.0.0.1:{port}", flag, "-servername", "localhost"]
    if ca is not None:
        cmd += ["-CAfile", str(ca)]
    if sess_in is not None:
        cmd += ["-sess_in", str(sess_in)]
    if sess_out is not None:
        cmd += ["-sess_out", str(sess_out)]
    cmd += ["-ign_eof", *extra]
    # Send a line and keep stdin open briefly so TLS 1.3 tickets are read.
    proc = subprocess.run(cmd, input=b"hi\n", capture_output=True, timeout=30, cwd=workdir)
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def s_client_reused(output: str) -> bool:
    """s_client prints 'Reused, TLSv1.x' on resumption and 'New, TLSv1.x' otherwise."""
    return "\nReused, " in output


@contextlib.contextmanager
def serving(ctx: ssl.SSLContext) -> Iterator[TLSServer]:
    with TLSServer(ctx) as srv:
        yield srv

