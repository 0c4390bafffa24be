"""A throwaway redis-server or etcd on 127.0.0.1 for the benchmarks, in a temp dir.

Self-contained (the standard library only), so that a benchmark needs neither
the test suite nor pytest.  Loopback only: client and peer listeners are
127.0.0.1; the data lives in the given directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

EXTRA_PATHS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin")


def find_program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_PATHS))
    if path is None:
        raise SystemExit(f"bench: {name} is not installed")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StoreServer:
    """One server process: ``start()`` returns once it answers, ``stop()`` ends it."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "server.log"

    def _cmd(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self._cmd(), cwd=self.dir, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while self.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if self._answers():
                    return
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"{self._cmd()[0]} never answered on port {self.port}: {tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class RedisServer(StoreServer):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = find_program("redis-server")
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix=bench"

    def _cmd(self) -> list[str]:
        return [self.exe, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--protected-mode", "yes", "--daemonize", "no"]

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), 1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")


class EtcdServer(StoreServer):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = find_program("etcd")
        self.port = free_port()
        self.peer_port = free_port()

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}/bench"

    def _cmd(self) -> list[str]:
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [self.exe, "--name", "stek-bench", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"stek-bench={peer}",
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"]

    def _answers(self) -> bool:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/health")
        with urllib.request.urlopen(req, timeout=2) as resp:
            return b'"true"' in resp.read()
