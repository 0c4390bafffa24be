"""stek.contrib.gunicorn: the ssl_context hook, in-process and under a real gunicorn.

The problem it solves, measured here against the same gunicorn: without the
hook, gunicorn's sync worker builds a new SSLContext (hence a new random
ticket key) for every connection, so not one reconnect resumes, even on the
worker that issued the ticket.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.multiworker import RECONNECTS, WORKERS, fresh_hook, workers_serving
from helpers.ports import free_port
from helpers.processes import (
    APPS,
    GET,
    HttpsReply,
    Proc,
    env_with,
    https_get,
    read_body,
    reconnect_run,
    wait_every_worker_on,
)
from stek.contrib import PerProcessContext
from stek.contrib import gunicorn as stek_gunicorn
from stek.stores import MemoryStore

# -- the hook in-process --------------------------------------------------------------


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[PerProcessContext]:
    """A fresh per-process cache behind the real hook, on a store in tmp_path."""
    with fresh_hook(monkeypatch, tmp_path, stek_gunicorn) as fresh:
        yield fresh


def test_hook_builds_and_installs_once_per_process(hook: PerProcessContext, certs: Certs,
                                                   tmp_path: Path) -> None:
    """Called per connection (as sync workers do), the hook builds one context, installs once."""
    built: list[ssl.SSLContext] = []

    def factory() -> ssl.SSLContext:
        built.append(server_context(certs))
        return built[-1]

    contexts = {id(stek_gunicorn.ssl_context(None, factory)) for _ in range(100)}
    assert len(built) == 1
    assert contexts == {id(built[0])}
    inst = stek_gunicorn.installation()
    assert inst is not None and inst.installed
    assert inst.store.url == f"file:{tmp_path}/ring.json"  # $STEK_STORE was read
    assert len(inst.ring) >= 1  # rotate=True created the ring
    assert (tmp_path / "ring.json").exists()


def test_hook_keeps_the_installation_alive(hook: PerProcessContext, certs: Certs) -> None:
    """Dropping every reference the caller holds leaves the callback installed and working."""
    import gc

    port_ctx = stek_gunicorn.ssl_context(None, lambda: server_context(certs))
    ctx_id = id(port_ctx)
    del port_ctx
    gc.collect()
    ctx = stek_gunicorn.ssl_context(None, lambda: server_context(certs))
    assert id(ctx) == ctx_id
    from helpers.tls_peers import reconnects, serving

    with serving(ctx) as srv:
        assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_3), 5) == 5
    inst = stek_gunicorn.installation()
    assert inst is not None and inst.counters.resumed >= 5


def test_forked_child_builds_its_own_context(hook: PerProcessContext, certs: Certs) -> None:
    """After fork() the parent's context is not reused: the child builds and installs its own."""
    parent_ctx = stek_gunicorn.ssl_context(None, lambda: server_context(certs))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            calls: list[int] = []

            def factory() -> ssl.SSLContext:
                calls.append(1)
                return server_context(certs)

            child_ctx = stek_gunicorn.ssl_context(None, factory)
            again = stek_gunicorn.ssl_context(None, factory)
            inst = stek_gunicorn.installation()
            ok = (child_ctx is not parent_ctx and again is child_ctx and calls == [1]
                  and inst is not None and inst.installed)
            os.write(w, b"ok" if ok else b"bad")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == b"ok"
    # The parent's context is untouched.
    assert stek_gunicorn.ssl_context(None, lambda: server_context(certs)) is parent_ctx


def test_hook_failure_is_not_cached(hook: PerProcessContext, certs: Certs,
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """STEK_STRICT=1: a store error surfaces as a StekError; the next connection tries again."""
    monkeypatch.setenv("STEK_STRICT", "1")
    (tmp_path / "ring.json").write_text("not a keyring")
    with pytest.raises(stek.StoreCorrupt):
        stek_gunicorn.ssl_context(None, lambda: server_context(certs))
    assert stek_gunicorn.installation() is None
    (tmp_path / "ring.json").unlink()
    ctx = stek_gunicorn.ssl_context(None, lambda: server_context(certs))
    assert stek_gunicorn.installation() is not None
    assert stek_gunicorn.ssl_context(None, lambda: server_context(certs)) is ctx


def test_hook_serves_on_a_corrupt_store_and_recovers(hook: PerProcessContext, certs: Certs,
                                                      tmp_path: Path) -> None:
    """Not strict (the default): the hook hands out a context that serves; the ring comes later."""
    (tmp_path / "ring.json").write_text("not a keyring")
    ctx = stek_gunicorn.ssl_context(None, lambda: server_context(certs))
    inst = stek_gunicorn.installation()
    assert inst is not None and not inst.store_ok and len(inst.ring) == 0
    from helpers.tls_peers import connect, reconnects, serving

    cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
    with serving(ctx) as srv:
        assert not connect(srv.port, cctx).reused
        (tmp_path / "ring.json").unlink()  # rotate=True then creates the ring
        deadline = time.monotonic() + 10
        while not inst.store_ok and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inst.store_ok and len(inst.ring) >= 1
        assert reconnects(srv.port, cctx, 3) == 3
        assert srv.errors == []
    assert stek_gunicorn.ssl_context(None, lambda: server_context(certs)) is ctx


def test_hook_has_the_arity_gunicorn_checks() -> None:
    """gunicorn validates ssl_context with validate_callable(2): a config file can name it."""
    from gunicorn.config import Config

    cfg = Config()
    cfg.set("ssl_context", "stek.contrib.gunicorn.ssl_context")
    assert cfg.ssl_context is stek_gunicorn.ssl_context


# -- real gunicorn, 4 sync workers --------------------------------------------------------


@contextlib.contextmanager
def gunicorn(certs: Certs, tmp_path: Path, *, with_stek: bool, worker_class: str = "sync",
             env: dict[str, str] | None = None) -> Iterator[tuple[int, Proc]]:
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS),
           "--worker-class", worker_class, "--bind", f"127.0.0.1:{port}",
           "--certfile", str(certs.cert), "--keyfile", str(certs.key),
           "--chdir", str(APPS), "--log-level", "info"]
    if with_stek:
        cmd += ["-c", str(APPS / "gunicorn_stek.conf.py")]
    cmd.append("wsgi_app:app")
    env = env or env_with(STEK_STORE=f"file:{tmp_path}/ring.json")
    with workers_serving(cmd, port, certs, tmp_path / "gunicorn.log",
                         r"Booting worker with pid: (\d+)", env=env) as proc:
        yield port, proc


@contextlib.contextmanager
def held(port: int, cctx: ssl.SSLContext) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSession]]:
    """A handshaken connection that sends no request: it keeps one sync worker busy.

    Returns the socket and the session its worker issued.  Under TLS 1.3 the
    ticket follows the handshake, so a short read lets the client take it in.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = cctx.wrap_socket(raw, server_hostname="localhost")
    try:
        tls.settimeout(0.5)
        with contextlib.suppress(TimeoutError, socket.timeout):
            tls.recv(1)
        tls.settimeout(10)
        assert tls.session is not None and tls.session.has_ticket
        yield tls, tls.session
    finally:
        tls.close()


def finish(tls: ssl.SSLSocket) -> int:
    """Send the held connection's request; the pid of the worker that held it."""
    tls.sendall(GET)
    return int(read_body(tls)["pid"])


def cross_worker(port: int, cctx: ssl.SSLContext, n: int) -> tuple[int, list[HttpsReply]]:
    """Issue a ticket on one sync worker and keep it busy; reconnect n times with that ticket.

    A sync worker serves one connection at a time, so while the issuer holds
    the held connection every reconnect lands on *another* worker: this is
    cross-worker resumption by construction, whatever the kernel's routing.
    """
    with held(port, cctx) as (tls, session):
        replies = [https_get(port, cctx, session) for _ in range(n)]
        issuer = finish(tls)
    return issuer, replies


@TLS_VERSIONS
def test_gunicorn_sync_workers_resume(certs: Certs, tmp_path: Path,
                                      tls_version: ssl.TLSVersion) -> None:
    """4 sync workers with the hook: >= 39 of 40 reconnects resume, whichever worker answers."""
    cctx = client_context(certs, tls_version)
    with gunicorn(certs, tmp_path, with_stek=True) as (port, proc):
        run = reconnect_run(port, cctx, RECONNECTS)
        issuer, replies = cross_worker(port, cctx, 10)
        final = {r.body["pid"]: r.body for r in replies}
        final.update({pid: {"counters": c} for pid, c in run.counters.items()
                      if pid not in final})
        log = proc.output()
        print(f"gunicorn+stek {tls_version.name}: {run.resumed}/{RECONNECTS} resumed, "
              f"workers seen {sorted(set(run.pids))}, counters {run.counters}")
    assert run.resumed >= RECONNECTS - 1, run
    assert all(r.version == ("TLSv1.3" if tls_version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
               for r in run.replies)
    # The held worker issued the ticket; other workers resumed it.
    others = {r.body["pid"] for r in replies}
    assert issuer not in others
    assert all(r.reused for r in replies), [(r.body["pid"], r.reused) for r in replies]
    # The callback really ran, in several worker processes (not OpenSSL's own keys).
    assert all(r.body["counters"] is not None for r in replies)
    resumers = {pid for pid, body in final.items() if body["counters"]["resumed"] > 0}
    assert resumers & others
    assert sum(c["issued"] for c in run.counters.values()) > 0
    assert len(resumers | {issuer}) >= 2
    # Every worker answered from one ring.
    assert len({r.body["generation"] for r in [*run.replies, *replies]}) == 1
    # Each worker installed once (the hook logs it), not once per connection.
    installs = re.findall(r"stek installed in pid (\d+)", log)
    assert 1 <= len(installs) == len(set(installs)) <= WORKERS, log
    assert set(map(int, installs)) >= {r.body["pid"] for r in [*run.replies, *replies]}


@TLS_VERSIONS
def test_gunicorn_without_stek_does_not_resume(certs: Certs, tmp_path: Path,
                                               tls_version: ssl.TLSVersion) -> None:
    """The baseline: same gunicorn, plain certfile: reconnects do not resume.

    gunicorn's default ssl_context hook builds a new SSLContext per connection
    (gunicorn/sock.py), each with its own random ticket key, so the count is
    0 whatever worker the kernel picks: not a matter of routing luck.
    """
    cctx = client_context(certs, tls_version)
    with gunicorn(certs, tmp_path, with_stek=False) as (port, _proc):
        run = reconnect_run(port, cctx, RECONNECTS)
        _issuer, replies = cross_worker(port, cctx, 5)
        print(f"gunicorn plain {tls_version.name}: {run.resumed}/{RECONNECTS} resumed, "
              f"workers seen {sorted(set(run.pids))}")
    assert run.resumed < RECONNECTS - 1
    assert run.resumed == 0
    assert not any(r.reused for r in replies)
    assert all(r.body["counters"] is None for r in run.replies)  # stek was not there


def test_gunicorn_gthread_workers_resume(certs: Certs, tmp_path: Path) -> None:
    """gthread workers also call the hook per connection: one context per worker still."""
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
    with gunicorn(certs, tmp_path, with_stek=True, worker_class="gthread") as (port, _p):
        run = reconnect_run(port, cctx, RECONNECTS)
    assert run.resumed >= RECONNECTS - 1, run
    assert sum(c["resumed"] for c in run.counters.values()) >= RECONNECTS - 1


def test_gunicorn_with_dead_redis_serves_then_picks_up_the_ring(
        certs: Certs, tmp_path: Path, kek_file: Path) -> None:
    """STEK_STORE names a Redis port with nothing listening: TLS works, without tickets.

    Then a real redis-server starts on that port and the ring is created
    there, sealed under the KEK: the workers read it without a restart and
    resume each other's tickets.  Each worker logs the outage once.
    """
    from helpers.store_servers import RedisServer

    redis = RedisServer(tmp_path / "redis")
    env = env_with(STEK_STORE=redis.url, STEK_KEK_FILE=str(kek_file))
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
    with gunicorn(certs, tmp_path, with_stek=True, env=env) as (port, proc):
        before = [https_get(port, cctx) for _ in range(8)]
        assert all(not r.reused for r in before)
        assert all(r.body["generation"] == 0 for r in before)  # no ring: no ticket
        assert all(r.body["counters"]["issued"] == 0 for r in before)
        with redis:
            store = stek.open_store(redis.url, kek_file=str(kek_file))
            ring = stek.rotate(store, create=stek.Policy()).ring  # workers may race: one ring
            wait_every_worker_on(port, cctx, ring.generation, WORKERS)
            run = reconnect_run(port, cctx, RECONNECTS)
            issuer, replies = cross_worker(port, cctx, 5)
            log = proc.output()
    assert run.resumed >= RECONNECTS - 1, run
    assert issuer not in {r.body["pid"] for r in replies}
    assert all(r.reused for r in replies)
    assert {r.body["generation"] for r in [*run.replies, *replies]} == {ring.generation}
    assert "Traceback" not in log and "wrong version number" not in log
    outages = re.findall(r"unreadable at start", log)
    assert 1 <= len(outages) <= WORKERS, log
    assert len(re.findall(r"is back", log)) <= WORKERS


def test_gunicorn_workers_read_a_mirror_owned_by_the_agents_user(certs: Certs,
                                                                 tmp_path: Path) -> None:
    """STEK_STORE=file:MIRROR?owner=NAME, as docs/fleet.md sets it for workers, on a mirror
    really owned by NAME: every worker boots (the hook sees a mirror: no rotation), serves
    its ring and resumes the other workers' tickets; the mirror is left as it was."""
    import pwd

    from stek.mirror import Mirror

    if os.geteuid() != 0:
        pytest.skip("needs root: the mirror is chowned to another user")
    agent_user = pwd.getpwnam("daemon")
    ring = stek.init_ring(MemoryStore(), stek.Policy()).ring
    path = tmp_path / "run" / "mirror.json"
    mirror = Mirror(path, source="redis://127.0.0.1:6379/0")
    mirror.prepare(MemoryStore())
    assert mirror.write(ring)
    os.chown(path, agent_user.pw_uid, agent_user.pw_gid)
    before = path.read_bytes()
    path.with_name("mirror.json.lock").unlink()  # the agent's write took the lock
    env = env_with(STEK_STORE=f"file:{path}?owner={agent_user.pw_name}")
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
    with gunicorn(certs, tmp_path, with_stek=True, env=env) as (port, proc):
        run = reconnect_run(port, cctx, RECONNECTS)
        issuer, replies = cross_worker(port, cctx, 5)
        log = proc.output()
    assert run.resumed >= RECONNECTS - 1, run
    assert issuer not in {r.body["pid"] for r in replies}
    assert all(r.reused and r.body["counters"]["resumed"] >= 1 for r in replies)
    assert {r.body["generation"] for r in [*run.replies, *replies]} == {ring.generation}
    assert "Traceback" not in log and "is a mirror" not in log
    assert len({r.body["pid"] for r in [*run.replies, *replies]}) >= 2  # workers, not one
    assert path.read_bytes() == before and path.stat().st_uid == agent_user.pw_uid
    assert not path.with_name("mirror.json.lock").exists()  # nobody tried to rotate it


def test_gunicorn_workers_resume_within_a_key_scope(certs: Certs, tmp_path: Path) -> None:
    """STEK_SCOPE=tenant: the workers resume each other's tickets under the scope's keys."""
    from stek.inspection import ticket_of
    from stek.scope import scoped
    from stek.stores.file import FileStore

    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    env = env_with(STEK_STORE=f"file:{tmp_path}/ring.json", STEK_SCOPE="tenant")
    with gunicorn(certs, tmp_path, with_stek=True, env=env) as (port, _proc):
        run = reconnect_run(port, cctx, RECONNECTS)
        issuer, replies = cross_worker(port, cctx, 5)
    assert run.resumed >= RECONNECTS - 1, run
    assert issuer not in {r.body["pid"] for r in replies}
    assert all(r.reused for r in replies)
    ring = FileStore(tmp_path / "ring.json").read()
    names = {k.name for k in scoped(ring, "tenant").keys}
    held = ticket_of(replies[-1].session)
    assert held is not None and held[:16] in names
    assert held[:16] not in {k.name for k in ring.keys}
