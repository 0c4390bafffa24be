"""Real server processes for the integration tests: start, wait, query, stop.

Every process runs on 127.0.0.1 in its own session (process group), so that
stopping it also stops the workers it forked or spawned, and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APPS = Path(__file__).resolve().parent.parent / "apps"


def env_with(**extra: str) -> dict[str, str]:
    """This environment plus ``extra`` (for example STEK_STORE)."""
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Proc:
    """A subprocess with its output in a log file; ``stop()`` ends it and its group."""

    def __init__(self, cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(cmd), stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_output(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Wait until ``pattern`` (a regex with one group) matched ``count`` distinct values."""
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(set(re.findall(pattern, self.output())))
            if len(found) >= count:
                return found
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited {self.popen.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {pattern!r} x{count}:\n"
                                     f"{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(15)
        # Whatever is left in the group this process leads (orphaned workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._out.close()


@contextlib.contextmanager
def running(cmd: Sequence[str], log: Path, **kw: Any) -> Iterator[Proc]:
    proc = Proc(cmd, log, **kw)
    try:
        yield proc
    finally:
        proc.stop()


@dataclass
class HttpsReply:
    reused: bool
    session: ssl.SSLSession | None
    version: str | None
    body: dict[str, Any]


def https_get(port: int, cctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> HttpsReply:
    """One HTTP/1.1 request over TLS (offering ``session``); the JSON body it got back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        version = tls.version()  # None once the peer has closed
        tls.sendall(GET)
        body = read_body(tls)
        return HttpsReply(tls.session_reused, tls.session, version, body)


#: The request every test server answers with its JSON status.
GET = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def read_body(tls: ssl.SSLSocket) -> Any:
    """Read the answer to GET to the end (so TLS 1.3 NewSessionTicket messages
    were processed); its JSON body."""
    data = b""
    with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"unexpected answer: {data[:200]!r}")
    return json.loads(body)


def wait_https(port: int, cctx: ssl.SSLContext, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            https_get(port, cctx)
            return
        except (OSError, AssertionError, ValueError):
            if proc.popen.poll() is not None:
                raise AssertionError(f"server exited {proc.popen.returncode}:\n{proc.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server never answered:\n{proc.output()}") from None
            time.sleep(0.1)


@dataclass
class ReconnectRun:
    """What N reconnects carrying the session saw."""

    resumed: int
    first_pid: int  # the worker that answered the first, full handshake
    pids: list[int]  # the worker that answered each reconnect, in order
    counters: dict[int, dict[str, int]]  # the latest counters each stek worker reported
    replies: list[HttpsReply]

    @property
    def moves(self) -> list[bool]:
        """For each reconnect: did it land on another worker than the one before it?

        That worker issued the ticket offered (or, after a TLS 1.2 resumption
        without renewal, holds the same ticket), so a move is a cross-worker
        resumption attempt.
        """
        previous = [self.first_pid, *self.pids[:-1]]
        return [p != q for p, q in zip(self.pids, previous)]


def reconnect_run(port: int, cctx: ssl.SSLContext, n: int, *, steer: bool = False) -> ReconnectRun:
    """Connect once, then ``n`` times with the latest session; count resumptions.

    ``steer``: every reconnect goes to another worker than the one that
    answered before it (that worker is held with SIGSTOP until the next
    answer).  Without it the kernel picks the worker, and on a loaded machine
    one worker can take all ``n``.
    """
    first = https_get(port, cctx)
    session = first.session
    replies = []
    answered: int = first.body["pid"]
    held: int | None = None
    try:
        for _ in range(n):
            if steer:
                held = _hold(answered, held)
            r = https_get(port, cctx, session)
            replies.append(r)
            session, answered = r.session, r.body["pid"]
    finally:
        if held is not None:
            os.kill(held, signal.SIGCONT)
    counters: dict[int, dict[str, int]] = {}
    for r in [first, *replies]:
        if r.body.get("counters") is not None:
            counters[r.body["pid"]] = r.body["counters"]
    return ReconnectRun(sum(r.reused for r in replies), first.body["pid"],
               [r.body["pid"] for r in replies], counters, replies)


def _hold(pid: int, held: int | None) -> int:
    """SIGSTOP ``pid`` (it accepts nothing until SIGCONT), releasing ``held`` first."""
    if held is not None and held != pid:
        os.kill(held, signal.SIGCONT)
    os.kill(pid, signal.SIGSTOP)
    return pid


def wait_every_worker_on(port: int, cctx: ssl.SSLContext, generation: int, workers: int,
                         timeout: float = 20) -> None:
    """Until each of ``workers`` worker processes has answered with ring ``generation``.

    Connections land on workers at random, so a run of answers can miss a worker
    that is still on its old ring: count distinct pids instead.
    """
    ready: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < workers and time.monotonic() < deadline:
        body = https_get(port, cctx).body
        if body["generation"] == generation:
            ready.add(body["pid"])
        else:
            time.sleep(0.1)
    assert len(ready) == workers, f"after {timeout}s only {sorted(ready)} hold generation " \
        f"{generation}"


def stek_cli(*args: str, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command line, as a separate process (``python -m stek.cli``)."""
    return subprocess.run([sys.executable, "-m", "stek.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def line_request(port: int, cctx: ssl.SSLContext,
                 session: ssl.SSLSession | None = None) -> HttpsReply:
    """One exchange with tests/apps/stek_server.py: a line out, a JSON line back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        version = tls.version()
        tls.sendall(b"hi\n")
        data = b""
        with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            while chunk := tls.recv(65536):
                data += chunk
        return HttpsReply(tls.session_reused, tls.session, version, json.loads(data))
