"""stek agent --mirror: one host's local copy of a sealed fleet ring, read by its workers.

The end-to-end tests run real processes: redis-server or etcd, ``stek agent
--mirror``, two Python servers and a gunicorn with 4 workers that read the
mirror file with no KEK and no store address in their environment.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import stek
from helpers.certs import Certs, client_context, server_context
from helpers.fleet_scenarios import ServerProc, ask, shared
from helpers.ports import free_port
from helpers.processes import APPS, GET, Proc, https_get, read_body, running, wait_https
from helpers.store_servers import EtcdServer, RedisServer, child_env
from helpers.waiting import wait_until
from stek import Policy, init_ring, rotate
from stek.agent import Agent
from stek.errors import ConfigError
from stek.keyring import Keyring
from stek.mirror import (
    MARKER,
    Mirror,
    MirrorCollector,
    MirroredRing,
    mirror_source,
    open_mirror,
    parse_target,
    refuse_rotation,
)
from stek.stores import FileStore, MemoryStore, open_store

#: The documented bound (docs/fleet.md): a rotation on the fleet store reaches
#: every worker reading a mirror within this many seconds.
PROPAGATION_BOUND = 2.0
WORKERS = 4
#: The end-to-end tests' ring rotates every 2 minutes, so the test's rotations (run
#: one and two slots ahead of the clock) publish keys no further ahead than readers
#: accept (publish_ahead plus MAX_CLOCK_SKEW, stek.schedule.check_windows).
FAST = Policy(rotate_every=120, accept_for=3600, publish_ahead=600)


def _ring() -> Keyring:
    store = MemoryStore()
    return init_ring(store, Policy()).ring


def _mirror_file(tmp_path: Path) -> tuple[Path, Keyring]:
    ring = _ring()
    path = tmp_path / "run" / "mirror.json"
    m = Mirror(path, source="redis://127.0.0.1:6379/0?prefix=stek")
    m.prepare(MemoryStore())
    assert m.write(ring)
    return path, ring


# -- the file ---------------------------------------------------------------------------


def test_mirror_file_is_the_ring_plus_a_marker(tmp_path: Path) -> None:
    """A file store reads the mirror as the same ring; the marker names the source; 0600."""
    path, ring = _mirror_file(tmp_path)
    assert FileStore(path).read() == ring
    doc = json.loads(path.read_bytes())
    assert doc[MARKER] == {"source": "redis://127.0.0.1:6379/0?prefix=stek"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert mirror_source(f"file:{path}") == "redis://127.0.0.1:6379/0?prefix=stek"
    assert mirror_source("redis://127.0.0.1:1/0") is None


def test_unchanged_ring_is_not_rewritten(tmp_path: Path) -> None:
    """A pass that changed nothing leaves the file (inode, mtime) alone: no worker wakes."""
    path, ring = _mirror_file(tmp_path)
    before = path.stat()
    m = Mirror(path, source="redis://127.0.0.1:6379/0?prefix=stek")
    assert m.write(ring) is False
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    newer = init_ring(MemoryStore(), Policy(rotate_every=1800)).ring
    assert m.write(newer) is True
    assert path.stat().st_ino != before.st_ino  # replaced by rename, not rewritten in place


def _other_group() -> str:
    """A group to share the mirror with: another one if we may chown to it (root)."""
    if os.geteuid() == 0:
        for name in ("daemon", "nogroup", "adm"):
            with contextlib.suppress(KeyError):
                grp.getgrnam(name)
                return name
    return grp.getgrgid(os.getgid()).gr_name


def test_mirror_group_makes_it_group_readable(tmp_path: Path) -> None:
    """--mirror-group: file 0640 in that group, directory 2750 (setgid) in that group."""
    group = _other_group()
    gid = grp.getgrnam(group).gr_gid
    path = tmp_path / "run" / "stek" / "mirror.json"
    m = open_mirror(f"file:{path}", group, MemoryStore())
    ring = _ring()
    assert m.write(ring)
    st, dst = path.stat(), path.parent.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid
    assert stat.S_IMODE(dst.st_mode) == 0o2750 and dst.st_gid == gid
    assert FileStore(path).read().generation == ring.generation


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("group", [None, "shared"])
def test_mirror_directories_are_private_whatever_the_umask(tmp_path: Path,
                                                           group: str | None) -> None:
    """Under umask 000, missing directories are 0700 (0711 above a --mirror-group one,
    which is 2750), never 0777."""
    path = tmp_path / "a" / "b" / "mirror.json"
    with _umask(0):
        m = open_mirror(f"file:{path}", _other_group() if group else None, MemoryStore())
        assert m.write(_ring())
    modes = [stat.S_IMODE(d.stat().st_mode) for d in (tmp_path / "a", path.parent)]
    assert modes == ([0o700, 0o700] if group is None else [0o711, 0o2750])
    assert stat.S_IMODE(path.stat().st_mode) == (0o600 if group is None else 0o640)


def test_mirror_refuses_a_directory_others_could_write_or_own(tmp_path: Path) -> None:
    """An existing directory must be safe, as for exports: not group- or world-writable,
    and this user's or root's; nothing is written under one that is not."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ConfigError, match=r"refusing to write keys under .*writable by group"):
        open_mirror(f"file:{shared}/mirror.json", None, MemoryStore())
    assert list(shared.iterdir()) == []
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, pwd.getpwnam(AGENT_USER).pw_uid, -1)
        with pytest.raises(ConfigError, match=r"refusing .* owned by uid"):
            open_mirror(f"file:{theirs}/mirror.json", _other_group(), MemoryStore())
        assert list(theirs.iterdir()) == []
        assert stat.S_IMODE(theirs.stat().st_mode) == 0o755


def test_unknown_group_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such group"):
        open_mirror(f"file:{tmp_path}/m.json", "no-such-group-stek", MemoryStore())


@pytest.mark.parametrize("target", ["redis://127.0.0.1/0", "mirror.json", "file:"])
def test_mirror_must_be_a_local_file(target: str) -> None:
    with pytest.raises(ConfigError, match="file:PATH"):
        open_mirror(target, None, MemoryStore())


def test_mirror_never_overwrites_a_hosts_own_keyring(tmp_path: Path) -> None:
    """A keyring that is not a mirror (this host's own ring) is left as it is."""
    own = FileStore(tmp_path / "keyring.json")
    init_ring(own, Policy())
    before = own.path.read_bytes()
    with pytest.raises(ConfigError, match="not a stek mirror"):
        open_mirror(f"file:{own.path}", None, MemoryStore())
    with pytest.raises(ConfigError, match="own --store"):
        open_mirror(f"file:{tmp_path}/other.json", None, FileStore(tmp_path / "other.json"))
    assert own.path.read_bytes() == before


# -- nobody but the agent rotates a mirror -----------------------------------------------


def test_install_rotate_on_a_mirror_serves_it_read_only(
        tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    """install(rotate=True) on a mirror: one warning, then served read-only (it raised
    MirroredRing, taking the server down); handshakes resume through stek's callback."""
    from helpers.tls_peers import TLSServer, connect

    path, ring = _mirror_file(tmp_path)
    before = path.read_bytes()
    ctx = server_context(certs)
    with caplog.at_level("WARNING", logger="stek.installation"):
        inst = stek.install(ctx, f"file:{path}", rotate=True)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "is a mirror of redis:" in warnings[0], warnings
        assert "read-only" in warnings[0]
        assert inst.rotate is False and inst.ring == ring
        cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
        with TLSServer(ctx) as srv:
            first = connect(srv.port, cctx)
            assert connect(srv.port, cctx, first.session).reused
        assert inst.counters.resumed >= 1
        inst.refresh()  # a re-read never rotates it either
    finally:
        inst.uninstall()
    assert path.read_bytes() == before


def test_stek_rotate_refuses_a_mirror(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    """`stek rotate` and `stek agent` on a mirror: one line, exit 2, the file untouched."""
    from stek.cli import main

    path, _ = _mirror_file(tmp_path)
    before = path.read_bytes()
    for argv in (["rotate"], ["agent", "--no-metrics"]):
        assert main([*argv, "--store", f"file:{path}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a mirror of" in err and "Traceback" not in err
    assert path.read_bytes() == before
    with pytest.raises(MirroredRing):
        refuse_rotation(FileStore(path))
    refuse_rotation(FileStore(tmp_path / "missing.json"))  # not a mirror: no objection


@pytest.mark.parametrize("force", [["--force"], []], ids=["force", "plain"])
def test_stek_init_refuses_a_mirror(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    force: list[str]) -> None:
    """`stek init [--force]` on a mirror: one line, exit 2, the file (marker, policy and
    keys) untouched, as `stek rotate`."""
    from stek.cli import main

    path, _ = _mirror_file(tmp_path)
    before = path.read_bytes()
    assert main(["init", *force, "--rotate-every", "2h", "--store", f"file:{path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a mirror of" in err and "Traceback" not in err
    assert path.read_bytes() == before


# -- the marker is read as the ring is: every check of the file store ------------------


def _hostile_mirror(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A keyring path the file store refuses, each once a mirror; and the refusal's words."""
    path, _ = _mirror_file(tmp_path)
    target = tmp_path / kind
    if kind == "fifo":  # opening it for reading without O_NONBLOCK waits for a writer
        os.mkfifo(target, 0o600)
        return target, "not a regular file"
    if kind == "symlink":  # to a genuine mirror: following it would find the marker
        target.symlink_to(path)
        return target, "symbolic link"
    if kind == "huge":  # a genuine mirror, padded past MAX_RING_BYTES
        target.write_bytes(path.read_bytes() + b" " * (2 << 20))
        os.chmod(target, 0o600)
        return target, "larger than"
    assert kind == "deep"
    target.write_bytes(b"[" * 1_000_000)
    os.chmod(target, 0o600)
    return target, "nested more than 16 levels deep"


HOSTILE = ["fifo", "symlink", "huge", "deep"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_cli_refuses_what_the_file_store_refuses(tmp_path: Path, kind: str) -> None:
    """`stek rotate`, `stek init`, `stek agent` on a FIFO, a symbolic link, an oversized or
    deeply nested file: the file store's one-line refusal, never a hang or a traceback."""
    path, reason = _hostile_mirror(tmp_path, kind)
    for command in (["rotate"], ["init"]):
        done = subprocess.run([sys.executable, "-m", "stek", *command, "--store", f"file:{path}"],
                              env=child_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode in (1, 2), (command, done)
        assert done.stderr.count("\n") == 1 and reason in done.stderr, (command, done.stderr)
    cmd = [sys.executable, "-m", "stek", "agent", "--no-metrics", "--interval", "1s",
           "--store", f"file:{path}"]
    with running(cmd, tmp_path / "agent.log", env=child_env()) as agent:
        agent.wait_output(f"({re.escape(reason)})")
        log = agent.output()
    assert "Traceback" not in log and "is a mirror" not in log, log
    if kind != "fifo":
        assert os.path.islink(path) == (kind == "symlink")


@pytest.mark.parametrize("kind", HOSTILE[1:])
def test_install_rotate_reports_what_the_file_store_refuses(tmp_path: Path, certs: Certs,
                                                            kind: str) -> None:
    """install(rotate=True) (the gunicorn and uvicorn hooks' default): the store's error,
    reported as any unreadable store is (not strict: TLS serves, without tickets)."""
    path, reason = _hostile_mirror(tmp_path, kind)
    assert mirror_source(path) is None and mirror_source(FileStore(path)) is None
    with pytest.raises(stek.StoreError, match=re.escape(reason)):
        stek.install(server_context(certs), FileStore(path), rotate=True, strict=True)
    inst = stek.install(server_context(certs), FileStore(path), rotate=True)
    try:
        assert not inst.store_ok and len(inst.ring) == 0
    finally:
        inst.uninstall()


@pytest.mark.parametrize("kind", HOSTILE)
def test_mirror_prepare_refuses_what_the_file_store_refuses(tmp_path: Path, kind: str) -> None:
    """--mirror on such a path: a ConfigError naming why, and the path left as it was."""
    path, reason = _hostile_mirror(tmp_path, kind)
    with pytest.raises(ConfigError, match=re.escape(reason)):
        open_mirror(f"file:{path}", None, MemoryStore())
    assert os.path.lexists(path)


# -- workers read the mirror as another user ---------------------------------------------


def test_owner_option_is_parsed_not_taken_for_the_path(tmp_path: Path, certs: Certs,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """file:PATH?owner=NAME (what workers are told to use): the marker is found, and the
    hooks' PerProcessContext installs without rotating instead of raising MirroredRing."""
    from stek.contrib import PerProcessContext

    if os.geteuid() != 0:
        pytest.skip("needs root: the mirror is chowned to another user")
    path, ring = _mirror_file(tmp_path)
    os.chown(path, pwd.getpwnam(AGENT_USER).pw_uid, -1)
    url = f"file:{path}?owner={AGENT_USER}"
    assert mirror_source(url) == "redis://127.0.0.1:6379/0?prefix=stek"
    assert mirror_source(open_store(url)) == "redis://127.0.0.1:6379/0?prefix=stek"
    assert mirror_source(f"file:{path}") is None  # owned by another user: refused, unread
    assert mirror_source(f"file:{path}?owner=no-such-user-stek") is None
    monkeypatch.setenv("STEK_STORE", url)
    hook = PerProcessContext("stek.test")
    hook.get(lambda: server_context(certs))
    inst = hook.installation()
    assert inst is not None
    try:
        assert inst.store_ok and inst.ring == ring and inst.store.url == url
    finally:
        inst.uninstall()


AGENT_USER = "daemon"
WORKER_USER = "nobody"
SHARED_GROUP = "nogroup"


def test_group_mirror_is_read_by_a_worker_running_as_another_user(certs: Certs,
                                                                  tmp_path: Path) -> None:
    """--mirror-group for real: the agent's user owns the 0640 file, in a 2750 directory of
    the group; two workers running as another user of that group (setuid after loading
    their certificate) read it through file:PATH?owner=AGENT, the hooks' way, and resume
    each other's tickets.  Without ?owner= a worker refuses the file and issues none."""
    if os.geteuid() != 0:
        pytest.skip("needs root: chown and setuid")
    agent_uid = pwd.getpwnam(AGENT_USER).pw_uid
    # tmp_path's parents are root's 0700: the mirror goes where the worker can reach it.
    base = Path(tempfile.mkdtemp(prefix="stek-mirror-"))
    servers: list[ServerProc] = []
    try:
        os.chmod(base, 0o755)
        path = base / "run" / "mirror.json"
        ring = _ring()
        mirror = open_mirror(f"file:{path}", SHARED_GROUP, MemoryStore())
        assert mirror.write(ring)
        for p in (path.parent, path):
            os.chown(p, agent_uid, -1)
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (agent_uid, grp.getgrnam(SHARED_GROUP).gr_gid)
        assert stat.S_IMODE(st.st_mode) == 0o640
        env = child_env(FLEET_SERVER_USER=f"{WORKER_USER}:{SHARED_GROUP}")
        url = f"file:{path}?owner={AGENT_USER}"
        for i in range(2):
            servers.append(ServerProc(certs, url, env, tmp_path / f"worker{i}.log"))
        refusing = ServerProc(certs, f"file:{path}", env, tmp_path / "no-owner.log")
        servers.append(refusing)
        worker_uid = pwd.getpwnam(WORKER_USER).pw_uid
        for s in servers:
            assert Path(f"/proc/{s.proc.pid}/status").read_text().count(f"\t{worker_uid}") >= 4
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            cctx = client_context(certs, version)
            first = ask(servers[0].port, cctx)
            assert not first.reused and first.doc["generation"] == ring.generation
            again = ask(servers[1].port, cctx, first.session)
            assert again.reused and again.doc["counters"]["resumed"] >= 1
            assert ask(servers[0].port, cctx, again.session).reused
            assert not ask(refusing.port, cctx, again.session).reused
        assert ask(refusing.port, cctx).doc["generation"] == 0
        assert "unreadable at start" in refusing.log.read_text()
        for s in servers[:2]:
            assert "Traceback" not in s.log.read_text()
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base)


# -- the agent hook ----------------------------------------------------------------------


def test_agent_pass_writes_the_mirror_and_reports_failures(tmp_path: Path) -> None:
    """Each pass writes the ring; a failed write is counted and shown by /healthz, then clears."""
    store = MemoryStore()
    path = tmp_path / "run" / "mirror.json"
    agent = Agent(store, policy=Policy())
    mirror = open_mirror(f"file:{path}", None, store)
    mirror.attach(agent)
    agent.step()
    assert agent.ring is not None and FileStore(path).read() == agent.ring
    assert agent.health() == []
    path.unlink()
    path.mkdir()  # the rename now fails (a directory in the way)
    (path / "x").touch()
    agent.step()
    problems = agent.health()
    assert len(problems) == 1 and "mirror" in problems[0] and "cannot write" in problems[0]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MirrorCollector(mirror))
    text = generate_latest(registry).decode()
    assert f'stek_mirror_write_failures_total{{path="{path}"}} 1.0' in text
    (path / "x").unlink()
    path.rmdir()
    agent.step()
    assert agent.health() == []
    assert FileStore(path).read() == agent.ring
    assert registry.get_sample_value("stek_mirror_generation", {"path": str(path)}) == \
        agent.ring.generation


# -- real processes ----------------------------------------------------------------------


class Host:
    """One host: the agent mirroring the fleet store, two Python servers, a gunicorn."""

    def __init__(self, certs: Certs, mirror: Path, tmp_path: Path) -> None:
        self.certs = certs
        self.mirror = mirror
        self.tmp = tmp_path
        self.servers: list[ServerProc] = []
        self.gunicorn: Proc | None = None
        self.gunicorn_port = 0
        self.worker_pids: list[int] = []

    @contextlib.contextmanager
    def serving(self) -> Iterator[Host]:
        # The workers' environment: the mirror and nothing else of stek's.
        env = child_env(STEK_STORE=f"file:{self.mirror}", PYTHONUNBUFFERED="1")
        url = f"file:{self.mirror}"
        port = free_port()
        cmd = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS),
               "--worker-class", "sync", "--bind", f"127.0.0.1:{port}",
               "--certfile", str(self.certs.cert), "--keyfile", str(self.certs.key),
               "--chdir", str(APPS), "--log-level", "info",
               "-c", str(APPS / "gunicorn_stek.conf.py"), "wsgi_app:app"]
        try:
            for i in range(2):
                self.servers.append(ServerProc(self.certs, url, env, self.tmp / f"py{i}.log"))
            with running(cmd, self.tmp / "gunicorn.log", env=env) as proc:
                self.gunicorn, self.gunicorn_port = proc, port
                pids = proc.wait_output(r"Booting worker with pid: (\d+)", WORKERS)
                self.worker_pids = [int(p) for p in pids]
                wait_https(port, client_context(self.certs, ssl.TLSVersion.TLSv1_3), proc)
                yield self
        finally:
            for s in self.servers:
                s.stop()

    def pids(self) -> list[int]:
        assert self.gunicorn is not None
        return [s.proc.pid for s in self.servers] + [self.gunicorn.pid, *self.worker_pids]

    def generations(self, cctx: ssl.SSLContext, want: int, deadline: float) -> dict[str, int]:
        """Ask every worker, again and again, until each serves generation ``want``
        or ``deadline`` passes; the last answer of each."""
        latest: dict[str, int] = {}
        while True:
            for i, s in enumerate(self.servers):
                latest[f"python{i}"] = ask(s.port, cctx).doc["generation"]
            with contextlib.suppress(OSError, ValueError):
                latest.update(self.gunicorn_round(cctx))
            if len(latest) == 2 + WORKERS and all(g == want for g in latest.values()):
                return latest
            if time.monotonic() >= deadline:
                return latest
            time.sleep(0.02)

    def gunicorn_round(self, cctx: ssl.SSLContext) -> dict[str, int]:
        """Every gunicorn worker's generation, each asked once.

        WORKERS connections complete their handshakes before any sends its
        request: a sync worker serves one connection at a time, so each is
        held by a different worker.  (Connections made one after the other
        go to whichever worker accepts first, which may leave one unasked for
        seconds.)
        """
        with contextlib.ExitStack() as held:
            conns = []
            for _ in range(WORKERS):
                raw = held.enter_context(
                    socket.create_connection(("127.0.0.1", self.gunicorn_port), timeout=10))
                conns.append(held.enter_context(
                    cctx.wrap_socket(raw, server_hostname="localhost")))
            for tls in conns:
                tls.sendall(GET)
            bodies = [read_body(tls) for tls in conns]
        answers = {f"gunicorn:{b['pid']}": b["generation"] for b in bodies}
        assert len(answers) == WORKERS, f"two connections reached one worker: {bodies}"
        return answers


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


def _connections(pid: int, port: int) -> int:
    """Established TCP connections that process ``pid`` holds to local port ``port``."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                sockets.add(target[len("socket:["):-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()  # sl local remote st ... inode (proc_net_tcp(5))
            if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) == port and f[9] in sockets:
                n += 1
    return n


def _cross_resumption(host: Host, cctx: ssl.SSLContext) -> None:
    """Tickets issued by each server resume on the others (and the callback ran)."""
    a, b = host.servers
    first = ask(a.port, cctx)
    assert not first.reused
    on_b = ask(b.port, cctx, first.session)
    assert on_b.reused and on_b.doc["counters"]["resumed"] >= 1
    on_g = https_get(host.gunicorn_port, cctx, on_b.session)
    assert on_g.reused and on_g.body["counters"]["resumed"] >= 1
    back = ask(a.port, cctx, on_g.session)  # issued (or renewed) by gunicorn, back to a
    assert back.reused and back.doc["counters"]["resumed"] >= 1
    g1 = https_get(host.gunicorn_port, cctx)
    assert not g1.reused and g1.body["counters"]["issued"] >= 1
    assert ask(b.port, cctx, g1.session).reused


def _rotate_and_wait(host: Host, fleet: Any, cctx: ssl.SSLContext, step: int,
                     timeout: float) -> float:
    """Rotate the fleet store (a new key) and return the seconds until every worker had it."""
    t0 = time.monotonic()
    ring = rotate(fleet, now=time.time() + step * FAST.rotate_every).ring
    assert ring.generation > 1
    latest = host.generations(cctx, ring.generation, t0 + timeout)
    took = time.monotonic() - t0
    stale = {w: g for w, g in latest.items() if g != ring.generation}
    if len(latest) != 2 + WORKERS or stale:
        assert host.gunicorn is not None
        stek_lines = [line for line in host.gunicorn.output().splitlines() if " stek" in line]
        pytest.fail(f"after {took:.2f}s: {latest} (want generation {ring.generation}); "
                    f"gunicorn's stek log:\n" + "\n".join(stek_lines[-20:]))
    return took


class _PasswordRedis(RedisServer):
    """redis-server whose only user is ``stek`` (Redis ACL), with a password that
    stek reads from a file (``password_file=``)."""

    def __init__(self, workdir: Path) -> None:
        from helpers.pki import password_file

        super().__init__(workdir)
        self.pw_file, self.password = password_file(workdir, "stek")
        self.conf = workdir / "acl.conf"
        self.conf.write_text(f"user default off\nuser stek on >{self.password} ~* &* +@all\n")

    @property
    def url(self) -> str:
        return (f"redis://stek@127.0.0.1:{self.port}/0?prefix=stektest"
                f"&password_file={self.pw_file}")

    def _cmd(self) -> list[str]:
        exe, *flags = super()._cmd()
        return [exe, str(self.conf), *flags]  # the password stays off redis-server's cmdline

    def _ready(self) -> None:
        import redis

        deadline = time.monotonic() + 10
        while True:
            c = redis.Redis(host="127.0.0.1", port=self.port, username="stek",
                            password=self.password, socket_timeout=1)
            try:
                if c.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                c.close()


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_agent_mirror_serves_workers_without_the_kek(kind: str, certs: Certs, kek_file: Path,
                                                     tmp_path: Path) -> None:
    """The whole mirror, with real processes, on a sealed Redis or etcd ring.

    * workers (2 Python servers, gunicorn with 4 workers) read the mirror
      file with no KEK, no store address and no store password (the Redis
      has an ACL user) in their environment or command line;
    * they resume each other's tickets under TLS 1.2 and 1.3;
    * a rotation on the fleet store reaches every worker within 2 s;
    * the store is stopped and started while they serve: no failed handshake.
    """
    server = (_PasswordRedis if kind == "redis" else EtcdServer)(tmp_path / kind)
    server.start()
    # What no worker may hold: the store's address and password, the KEK.
    secrets = {"store URL": server.url, "store address": f"127.0.0.1:{server.port}",
               "KEK file": str(kek_file), "KEK": kek_file.read_text().strip()}
    if isinstance(server, _PasswordRedis):
        secrets["store password"] = server.password
    try:
        fleet = shared(server.url, kek_file)
        init_ring(fleet, FAST)
        mirror = tmp_path / "run" / "stek" / "mirror.json"
        agent_cmd = [sys.executable, "-m", "stek.cli", "agent", "--store", server.url,
                     "--kek-file", str(kek_file), "--mirror", f"file:{mirror}",
                     "--no-metrics", "--interval", "1s"]
        with running(agent_cmd, tmp_path / "agent.log", env=child_env()) as agent:
            wait_until(lambda: mirror_source(mirror) == fleet.url, timeout=20, step=0.05)
            with Host(certs, mirror, tmp_path).serving() as host:
                assert len(host.pids()) == 2 + 1 + WORKERS
                for pid in host.pids():
                    env = _environ(pid)
                    assert env["STEK_STORE"] == f"file:{mirror}"
                    leaked = [k for k, v in env.items() if k.startswith("STEK_KEK")
                              or str(server.port) in v or str(kek_file) in v]
                    assert leaked == [], (pid, leaked)
                    raw = (Path(f"/proc/{pid}/environ").read_bytes()
                           + Path(f"/proc/{pid}/cmdline").read_bytes()).decode(errors="replace")
                    assert [k for k, v in secrets.items() if v in raw] == [], pid
                for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                    _cross_resumption(host, client_context(certs, version))

                cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
                took = _rotate_and_wait(host, fleet, cctx, 1, PROPAGATION_BOUND)
                print(f"{kind}: a rotation reached all {2 + WORKERS} workers in {took:.2f}s")
                if kind == "redis":  # one client per host: RESP3, one connection
                    assert _connections(agent.pid, server.port) == 1

                _outage_without_failed_handshakes(host, server, mirror, certs,
                                                  lambda: agent.output().count("retrying in"))
                # Once the store is back, the agent follows it again (liveness only).
                _rotate_and_wait(host, shared(server.url, kek_file), cctx, 2, 20.0)
                if kind == "redis":  # reconnected: still one
                    assert _connections(agent.pid, server.port) == 1
            log = agent.output()
        assert "retrying in" in log  # the agent saw the outage
        assert "Traceback" not in log
    finally:
        server.stop()


def _outage_without_failed_handshakes(host: Host, server: Any, mirror: Path, certs: Certs,
                                      agent_retries: Callable[[], int]) -> None:
    stop = threading.Event()
    errors: list[str] = []
    counts = {"down": [0, 0], "other": [0, 0]}
    phase = ["other"]
    holding: set[ssl.TLSVersion] = set()  # client threads holding a session

    def clients(version: ssl.TLSVersion) -> None:
        cctx = client_context(certs, version)
        session = None
        i = 0
        while not stop.is_set():
            try:
                if i % 3 == 2:
                    r = https_get(host.gunicorn_port, cctx, session)
                    reused, session = r.reused, r.session
                else:
                    a = ask(host.servers[i % 3].port, cctx, session)
                    reused, session = a.reused, a.session
            except (OSError, ssl.SSLError, AssertionError, ValueError) as exc:
                errors.append(f"{phase[0]} {version.name}: {exc!r}")
                session = None
                holding.discard(version)
                continue
            counts[phase[0]][0] += 1
            counts[phase[0]][1] += reused
            if session is not None:
                holding.add(version)
            i += 1

    threads = [threading.Thread(target=clients, args=(v,))
               for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)]
    for t in threads:
        t.start()
    try:
        # Every client holds a session before the store goes: each one resumes below.
        wait_until(lambda: len(holding) == len(threads) or bool(errors), timeout=30, step=0.05)
        before = mirror.stat()
        retries = agent_retries()
        server.stop()
        phase[0] = "down"
        # Handshakes go on while the agent fails against the store and retries.
        wait_until(lambda: counts["down"][0] >= 6 and agent_retries() > retries, timeout=30,
                   step=0.1)
        after = mirror.stat()
        phase[0] = "other"
        server.start()
        # Handshakes go on as the store comes back.
        so_far = counts["other"][0]
        wait_until(lambda: counts["other"][0] >= so_far + 6 or bool(errors), timeout=30,
                   step=0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    done, reused = counts["down"]
    assert done >= 6, counts
    assert reused == done, counts  # sessions carried over from before: every one resumed
    # The mirror kept its last ring through the outage.
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert isinstance(open_store(f"file:{mirror}").read(), Keyring)



def test_mirror_url_error_never_shows_a_password() -> None:
    """--mirror given a store URL by mistake: one line, its password scrubbed."""
    for bad in ("redis://u:hunter2secret@127.0.0.1:1/0", "file:/x?password=hunter2secret"):
        with pytest.raises(ConfigError) as info:
            parse_target(bad)
        assert "hunter2secret" not in str(info.value)
