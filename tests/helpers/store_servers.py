"""Real redis-server and etcd for the fleet tests and the benchmarks, on 127.0.0.1 only.

Each server can be killed (SIGKILL, as a crash) and restarted on the same
port and data directory, so outage tests see the store vanish and return.

The benchmarks in bench/ start their servers here too, without the test
suite's dependencies: this module and those it imports (helpers.ports,
helpers.programs, helpers.pki) need only the standard library and
cryptography, and redis where a Redis server is queried.
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
from typing import Any, TypeVar

from helpers.ports import free_port
from helpers.programs import find_program

#: tests/, on the children's PYTHONPATH so that they import ``helpers`` as the tests do.
TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
SRC = ROOT / "src"


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port}: {log.read_text()[-2000:]}")


S = TypeVar("S", bound="_Server")


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
        try:
            _wait_port(self.port, self.proc, self.log)
            self._ready()
        except BaseException:
            self.stop()  # a server that never became ready must not outlive the test
            raise

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

    def __enter__(self: S) -> S:
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
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS), env.get("PYTHONPATH", "")])
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
def started(server: S) -> Iterator[S]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- production-shaped stores: TLS everywhere, authentication, several members ------------


def _etcdctl(endpoints: str, pki: Any, *args: str, user: str | None = None) -> str:
    cmd = [find_program("etcdctl"), "--endpoints", endpoints, "--cacert", str(pki.ca),
           "--cert", str(pki.client_cert), "--key", str(pki.client_key), "--dial-timeout", "5s"]
    if user:
        cmd += ["--user", user]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "ETCDCTL_API": "3"})
    if proc.returncode != 0:
        raise RuntimeError(f"etcdctl {args[:2]} failed: {proc.stderr[-1000:]}")
    return proc.stdout


class EtcdMember(_Server):
    def __init__(self, workdir: Path, name: str, pki: Any) -> None:
        super().__init__(workdir)
        self.exe = find_program("etcd")
        self.name = name
        self.pki = pki
        self.port = free_port()
        self.peer_port = free_port()
        self.cluster = ""
        self.state = "new"
        #: More etcd flags (e.g. ``--auth-token-ttl``).
        self.extra: list[str] = []

    def _cmd(self) -> list[str]:
        p = self.pki
        client = f"https://127.0.0.1:{self.port}"
        peer = f"https://127.0.0.1:{self.peer_port}"
        # --trusted-ca-file on client URLs makes etcd 3.4 ask for client certificates.
        return [self.exe, "--name", self.name, "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self.cluster, "--initial-cluster-state", self.state,
                "--initial-cluster-token", "stek-test",
                "--cert-file", str(p.server_cert), "--key-file", str(p.server_key),
                "--trusted-ca-file", str(p.ca), "--client-cert-auth",
                "--peer-cert-file", str(p.server_cert), "--peer-key-file", str(p.server_key),
                "--peer-trusted-ca-file", str(p.ca), "--peer-client-cert-auth",
                # Short elections: a lost leader is replaced in about a second.
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", "stderr", *self.extra]

    def start_async(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self._cmd(), cwd=self.dir, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        self.start_async()
        assert self.proc is not None
        _wait_port(self.port, self.proc, self.log)


class EtcdCluster:
    """Three etcd members, TLS on client and peer URLs, authentication on.

    Users: ``root``; ``stek`` (read-write on every key under ``/``) for
    rotators and agents; ``server`` (read-only on ``/stektest/``) for servers.
    """

    def __init__(self, workdir: Path, pki: Any, n: int = 3) -> None:
        from helpers.pki import password_file

        self.pki = pki
        self.dir = workdir
        self.members = [EtcdMember(workdir / f"m{i}", f"m{i}", pki) for i in range(n)]
        cluster = ",".join(f"{m.name}=https://127.0.0.1:{m.peer_port}" for m in self.members)
        for m in self.members:
            m.cluster = cluster
        self.root_pw = password_file(workdir, "root")[1]
        self.pw_file, self.password = password_file(workdir, "stek")
        self.server_pw_file, self.server_password = password_file(workdir, "server")
        self.prefix = "stektest"

    @property
    def endpoints(self) -> str:
        return ",".join(f"127.0.0.1:{m.port}" for m in self.members)

    def url_for(self, prefix: str, user: str = "stek", pw_file: Path | None = None, *,
                cacert: Path | None = None, cert: Path | None = None,
                key: Path | None = None) -> str:
        p = self.pki
        return (f"etcds://{self.endpoints}/{prefix}?cacert={cacert or p.ca}"
                f"&cert={cert or p.client_cert}&key={key or p.client_key}"
                f"&user={user}&password_file={pw_file or self.pw_file}")

    @property
    def url(self) -> str:
        return self.url_for(self.prefix)

    @property
    def server_url(self) -> str:
        """Read-only credentials, for the serving processes."""
        return self.url_for(self.prefix, "server", self.server_pw_file)

    def start(self) -> None:
        """Start every member (they need each other for quorum), then wait until it answers."""
        try:
            for m in self.members:
                if m.proc is None:
                    m.start_async()
            for m in self.members:
                assert m.proc is not None
                _wait_port(m.port, m.proc, m.log)
            self.wait_healthy()
        except BaseException:
            self.stop()  # no member may outlive a cluster that never came up
            raise
        for m in self.members:
            m.state = "existing"
        if not getattr(self, "_auth", False):
            self._enable_auth()

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _etcdctl(self.endpoints_https(live_only=True), self.pki, "endpoint", "health",
                         user=f"root:{self.root_pw}" if getattr(self, "_auth", False) else None)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def endpoints_https(self, live_only: bool = False) -> str:
        return ",".join(f"https://127.0.0.1:{m.port}" for m in self.members
                        if not live_only or m.proc is not None)

    def _enable_auth(self) -> None:
        e, p = self.endpoints_https(), self.pki
        for user, pw in (("root", self.root_pw), ("stek", self.password),
                         ("server", self.server_password)):
            _etcdctl(e, p, "user", "add", user, "--new-user-password", pw)
        _etcdctl(e, p, "role", "add", "stek-rw")
        _etcdctl(e, p, "role", "grant-permission", "stek-rw", "--prefix=true", "readwrite", "/")
        _etcdctl(e, p, "user", "grant-role", "stek", "stek-rw")
        _etcdctl(e, p, "role", "add", "stek-ro")
        _etcdctl(e, p, "role", "grant-permission", "stek-ro", "--prefix=true", "read",
                 f"/{self.prefix}/")
        _etcdctl(e, p, "user", "grant-role", "server", "stek-ro")
        _etcdctl(e, p, "auth", "enable")
        self._auth = True

    def leader(self) -> int:
        """Index of the member that leads now."""
        out = _etcdctl(self.endpoints_https(live_only=True), self.pki, "endpoint", "status",
                       "-w", "json", user=f"root:{self.root_pw}")
        for st in json.loads(out):
            if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
                port = int(st["Endpoint"].rsplit(":", 1)[1])
                return next(i for i, m in enumerate(self.members) if m.port == port)
        raise RuntimeError("no leader")

    def kill(self, i: int | None = None) -> None:
        """SIGKILL one member, or every member (the store vanishes)."""
        for m in self.members if i is None else [self.members[i]]:
            m.kill()

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def raw_values(self) -> dict[bytes, bytes]:
        out = _etcdctl(self.endpoints_https(live_only=True), self.pki, "get", "", "--prefix",
                       "-w", "json", user=f"root:{self.root_pw}")
        return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", ""))
                for kv in json.loads(out).get("kvs", [])}


class RedisNode(_Server):
    """redis-server or redis-sentinel over TLS only (port 0, tls-port), from a config file."""

    def __init__(self, workdir: Path, lines: list[str], sentinel: bool = False) -> None:
        super().__init__(workdir)
        self.exe = find_program("redis-sentinel" if sentinel else "redis-server")
        self.port = free_port()
        self.conf = self.dir / "redis.conf"
        self.sentinel = sentinel
        self.lines = lines

    def write_conf(self, pki: Any) -> None:
        base = ["port 0", f"tls-port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
                f"tls-cert-file {pki.server_cert}", f"tls-key-file {pki.server_key}",
                f"tls-ca-cert-file {pki.ca}", "tls-auth-clients yes", "tls-replication yes"]
        if not self.sentinel:
            base += ["save \"\"", "appendonly no", "daemonize no", "protected-mode no"]
        self.conf.write_text("\n".join(base + self.lines) + "\n")

    def _cmd(self) -> list[str]:
        return [self.exe, str(self.conf)]


class RedisTLSServer(RedisNode):
    """One TLS-only redis-server with an ACL user for stek (``password_file=``).

    ``default`` holds an admin password (for raw_values); ``stek`` gets the
    rotating user's command set from docs/fleet.md on every key, so that the
    shared scenarios may use other prefixes.  Persisted like RedisServer (AOF,
    fsync always), so a kill and a restart keep the ring.
    """

    prefix = "stektest"

    def __init__(self, workdir: Path, pki: Any) -> None:
        from helpers.pki import password_file

        workdir.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.admin_pw = password_file(workdir, "admin")[1]
        self.pw_file, self.password = password_file(workdir, "stek")
        # Later lines win over write_conf's defaults (redis.conf: the last value counts).
        super().__init__(workdir, [
            f"requirepass {self.admin_pw}",
            f"user stek on >{self.password} ~* &* +@all -@dangerous +role +wait",
            "appendonly yes", "appendfsync always"])
        self.write_conf(pki)

    def url_for(self, prefix: str) -> str:
        p = self.pki
        return (f"rediss://stek@127.0.0.1:{self.port}/0?prefix={prefix}&cacert={p.ca}"
                f"&cert={p.client_cert}&key={p.client_key}&password_file={self.pw_file}")

    @property
    def url(self) -> str:
        return self.url_for(self.prefix)

    def admin(self) -> Any:
        import redis

        p = self.pki
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.admin_pw, ssl=True,
                           ssl_ca_certs=str(p.ca), ssl_certfile=str(p.client_cert),
                           ssl_keyfile=str(p.client_key), socket_timeout=2)

    def _ready(self) -> None:
        # AOF replay done and accepting commands (PING answers LOADING until then).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                c = self.admin()
                try:
                    if c.ping():
                        return
                finally:
                    c.close()
            time.sleep(0.05)
        raise RuntimeError("redis-server (TLS) not answering PING")

    def raw_values(self) -> dict[bytes, bytes]:
        c = self.admin()
        try:
            return {k: c.get(k) or b"" for k in c.scan_iter("*") if c.type(k) == b"string"}
        finally:
            c.close()


class RedisSentinelSet:
    """A TLS primary, one TLS replica and three TLS Sentinels; an ACL user for stek.

    ``default`` holds the replication and Sentinel password; ``stek`` may
    touch only ``stektest*`` keys and channels (Redis ACL, 7.0).
    """

    master = "stekmaster"
    prefix = "stektest"

    def __init__(self, workdir: Path, pki: Any) -> None:
        from helpers.pki import password_file

        self.pki, self.dir = pki, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.admin_pw = password_file(workdir, "admin")[1].replace("/", "x").replace("+", "y")
        self.pw_file, self.password = password_file(workdir, "stek")
        self.sentinel_pw_file, self.sentinel_password = password_file(
            workdir, "sentinel", "sentinel" + self.admin_pw)
        acl = [f"requirepass {self.admin_pw}", f"masterauth {self.admin_pw}",
               f"user stek on >{self.password} ~{self.prefix}* &{self.prefix}* +@all"]
        self.nodes = [RedisNode(workdir / "r0", acl), RedisNode(workdir / "r1", acl)]
        self.nodes[1].lines = [*acl, f"replicaof 127.0.0.1 {self.nodes[0].port}"]
        self.sentinels = [RedisNode(workdir / f"s{i}", [], sentinel=True) for i in range(3)]
        for s in self.sentinels:
            s.lines = [f"sentinel monitor {self.master} 127.0.0.1 {self.nodes[0].port} 2",
                       f"sentinel auth-pass {self.master} {self.admin_pw}",
                       f"sentinel down-after-milliseconds {self.master} 1000",
                       f"sentinel failover-timeout {self.master} 5000",
                       f"requirepass {self.sentinel_password}"]

    def url_for(self, prefix: str) -> str:
        p = self.pki
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return (f"rediss+sentinel://stek@{hosts}/{self.master}/0?prefix={prefix}"
                f"&cacert={p.ca}&cert={p.client_cert}&key={p.client_key}"
                f"&password_file={self.pw_file}&sentinel_password_file={self.sentinel_pw_file}")

    @property
    def url(self) -> str:
        return self.url_for(self.prefix)

    def start(self) -> None:
        try:
            for n in (*self.nodes, *self.sentinels):
                if n.proc is None:
                    if not n.conf.exists():
                        n.write_conf(self.pki)
                    n.start()
            self.wait_replicated()
        except BaseException:
            self.stop()  # no node may outlive a set that never came up
            raise

    def _admin(self, node: RedisNode) -> Any:
        import redis

        p = self.pki
        return redis.Redis(host="127.0.0.1", port=node.port, password=self.admin_pw, ssl=True,
                           ssl_ca_certs=str(p.ca), ssl_certfile=str(p.client_cert),
                           ssl_keyfile=str(p.client_key), socket_timeout=2)

    def primary(self) -> int:
        for i, n in enumerate(self.nodes):
            if n.proc is None:
                continue
            c = self._admin(n)
            try:
                if c.execute_command("ROLE")[0] in (b"master", "master"):
                    return i
            finally:
                c.close()
        raise RuntimeError("no primary")

    def wait_replicated(self, timeout: float = 30) -> None:
        """Until the primary has a connected replica and every Sentinel knows it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                c = self._admin(self.nodes[self.primary()])
                try:
                    info = c.info("replication")
                finally:
                    c.close()
                online = (info.get("slave0") or {}).get("state") == "online"
                if online and self._sentinels_know():
                    return
            time.sleep(0.2)
        raise RuntimeError("replica or sentinels not ready")

    def _sentinels_know(self) -> bool:
        import redis

        p = self.pki
        for s in self.sentinels:
            c = redis.Redis(host="127.0.0.1", port=s.port, password=self.sentinel_password,
                            ssl=True, ssl_ca_certs=str(p.ca), ssl_certfile=str(p.client_cert),
                            ssl_keyfile=str(p.client_key), socket_timeout=2)
            try:
                if int(c.sentinel_master(self.master).get("num-slaves", 0)) < 1:
                    return False
            finally:
                c.close()
        return True

    def kill(self, i: int | None = None) -> None:
        for n in (self.nodes if i is None else [self.nodes[i]]):
            n.kill()

    def stop(self) -> None:
        for n in (*self.sentinels, *self.nodes):
            n.stop()

    def raw_values(self) -> dict[bytes, bytes]:
        c = self._admin(self.nodes[self.primary()])
        try:
            return {k: c.get(k) or b"" for k in c.scan_iter("*") if c.type(k) == b"string"}
        finally:
            c.close()
