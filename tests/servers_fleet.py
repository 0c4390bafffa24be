"""Real redis-server and etcd for the fleet tests, on 127.0.0.1 only, in temp dirs.

Each server can be killed (SIGKILL, as a crash) and restarted on the same
port and data directory, so outage tests see the store vanish and return.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conftest import find_program, free_port

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}: {log.read_text()[-2000:]}")


class _Server:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def _cmd(self) -> list[str]:
        raise NotImplementedError

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "server.log"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self._cmd(), cwd=self.dir, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, self.log)
        self._ready()

    def _ready(self) -> None:
        pass

    def kill(self) -> None:
        """SIGKILL: the store vanishes as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(_Server):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = find_program("redis-server")
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix=stektest"

    def _cmd(self) -> list[str]:
        return [self.exe, "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
                "--appendfsync", "always", "--protected-mode", "yes", "--daemonize", "no"]

    def _ready(self) -> None:
        # AOF replay done and accepting commands.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server not answering PING")

    def raw_values(self) -> dict[bytes, bytes]:
        """Every string key and value in the server, read with a bare client."""
        import redis

        c = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return {k: c.get(k) or b"" for k in c.scan_iter("*") if c.type(k) == b"string"}
        finally:
            c.close()


class EtcdServer(_Server):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.exe = find_program("etcd")
        self.port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.port:
            self.peer_port = free_port()

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}/stektest"

    def _cmd(self) -> list[str]:
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        # Loopback only: client, peer and metrics listeners are all 127.0.0.1.
        return [self.exe, "--name", "stek-test", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"stek-test={peer}",
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"]

    def _ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                body = self._post("/v3/kv/range", {"key": base64.b64encode(b"x").decode()})
                if "header" in body:
                    return
            time.sleep(0.1)
        raise RuntimeError("etcd not answering")

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def raw_values(self) -> dict[bytes, bytes]:
        """Every key and value in etcd, read through the bare gateway."""
        body = self._post("/v3/kv/range", {"key": base64.b64encode(b"\0").decode(),
                                            "range_end": base64.b64encode(b"\0").decode()})
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", ""))
                for kv in body.get("kvs", [])}


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    for k in ("STEK_KEK", "STEK_KEK_FILE", "STEK_INSECURE_PLAINTEXT", "STEK_STORE"):
        env.pop(k, None)
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"child failed: {proc.stderr.decode()[-3000:]}")
    return proc.stdout.decode()


@contextlib.contextmanager
def started(server: _Server) -> Iterator[_Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
