"""The real ``stek agent`` feeding several server instances from one export (repeated
--reload, repeated --haproxy-socket), one scope per export, and what it does with a
mistyped export path."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.certs import TLS_VERSIONS, Certs, client_context
from helpers.web_servers import Hit, Server, get, haproxy, nginx
from integration.test_agent_process import agent, stop
from stek.export import export
from stek.keyring import Keyring
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.scope import scoped
from stek.stores import FileStore

pytestmark = pytest.mark.servers


def rings(tmp_path: Path) -> tuple[FileStore, Keyring, float]:
    """The agent's ring (real clock), and another ring the servers start on."""
    now = time.time()
    policy = Policy(rotate_every=3600, accept_for=3600, publish_ahead=60)
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, policy, now=now)
    old = FileStore(tmp_path / "old.json")
    init_ring(old, policy, now=now)
    return store, old.read(), now


def encrypting(ring: Keyring, now: float) -> bytes:
    key = ring.encrypting_key(now)
    assert key is not None
    return key.name


def serving(server: Server, cctx: ssl.SSLContext, name: bytes, log: Path,
            workers: int | None = None) -> Hit:
    """An answer from ``server`` sealed under key ``name``, once only its new ``workers``
    are left (a reloaded nginx swaps its workers gracefully: an old one, still on the
    old keys, may answer in between)."""
    deadline = time.monotonic() + 30
    while True:
        if workers is None or len(server.children()) == workers:
            hit = get(server.port, cctx)
            if hit.name == name:
                return hit
        assert time.monotonic() < deadline, f"port {server.port} never used the new keys:" \
            f"\n{log.read_text()}"
        time.sleep(0.1)


def agent_cmd(store: FileStore, *args: str) -> list[str]:
    return [sys.executable, "-m", "stek.cli", "agent", "--no-metrics", "--store",
            f"file:{store.path}", *args]


@TLS_VERSIONS
def test_two_nginx_on_one_export_are_both_reloaded(tmp_path: Path, certs: Certs,
                                                   tls_version: ssl.TLSVersion) -> None:
    store, old, now = rings(tmp_path)
    out = tmp_path / "nginx"
    export("nginx", old, now, out)  # what both instances start with
    cctx = client_context(certs, tls_version)
    log = tmp_path / "agent.log"
    with nginx(tmp_path, certs, out / "tickets.conf", "a") as a, \
            nginx(tmp_path, certs, out / "tickets.conf", "b") as b:
        assert get(a.port, cctx).name == encrypting(old, now)
        cmd = agent_cmd(store, "--export", f"nginx:{out}", "--reload", f"kill -HUP {a.pid}",
                        "--reload", f"kill -HUP {b.pid}")
        with agent(cmd, log) as proc:
            want = encrypting(store.read(), now)
            on_a = serving(a, cctx, want, log, workers=1)
            on_b = serving(b, cctx, want, log, workers=1)
            assert get(b.port, cctx, on_a.session).reused
            assert get(a.port, cctx, on_b.session).reused
            stop(proc)
    text = log.read_text()
    assert "reload 1 of 2 exited 0" in text and "reload 2 of 2 exited 0" in text, text


@TLS_VERSIONS
def test_two_haproxy_on_one_export_are_both_updated(tmp_path: Path, certs: Certs,
                                                    tls_version: ssl.TLSVersion) -> None:
    store, old, now = rings(tmp_path)
    keys = tmp_path / "haproxy.keys"
    export("haproxy", old, now, keys)
    cctx = client_context(certs, tls_version)
    log = tmp_path / "agent.log"
    with haproxy(tmp_path, certs, keys, "a") as a, haproxy(tmp_path, certs, keys, "b") as b:
        assert a.sock is not None and b.sock is not None
        assert get(a.port, cctx).name == encrypting(old, now)
        cmd = agent_cmd(store, "--export", f"haproxy:{keys}", "--haproxy-socket", str(a.sock),
                        "--haproxy-socket", str(b.sock))
        with agent(cmd, log) as proc:
            want = encrypting(store.read(), now)
            on_a = serving(a, cctx, want, log)
            on_b = serving(b, cctx, want, log)
            assert get(b.port, cctx, on_a.session).reused
            assert get(a.port, cctx, on_b.session).reused
            stop(proc)
    text = log.read_text()
    assert f"runtime API {a.sock}" in text and f"runtime API {b.sock}" in text, text


@TLS_VERSIONS
def test_a_scope_per_export_keeps_two_nginx_apart(tmp_path: Path, certs: Certs,
                                                  tls_version: ssl.TLSVersion) -> None:
    """Same certificate, same ring: without scopes they resume each other's tickets
    (test_export_nginx); with one scope each, each resumes only its own."""
    store, _, now = rings(tmp_path)
    ring = store.read()
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    for d in (dir_a, dir_b):
        export("nginx", ring, now, d)  # unscoped until the agent runs
    cctx = client_context(certs, tls_version)
    log = tmp_path / "agent.log"
    with nginx(tmp_path, certs, dir_a / "tickets.conf", "a") as a, \
            nginx(tmp_path, certs, dir_b / "tickets.conf", "b") as b:
        before = get(a.port, cctx)
        assert get(b.port, cctx, before.session).reused  # one ring, no scope: shared
        cmd = agent_cmd(store, "--export", f"nginx:{dir_a}", "--scope", "a",
                        "--reload", f"kill -HUP {a.pid}",
                        "--export", f"nginx:{dir_b}", "--scope", "b",
                        "--reload", f"kill -HUP {b.pid}")
        with agent(cmd, log) as proc:
            on_a = serving(a, cctx, encrypting(scoped(ring, "a"), now), log, workers=1)
            on_b = serving(b, cctx, encrypting(scoped(ring, "b"), now), log, workers=1)
            assert on_a.name != on_b.name
            assert get(a.port, cctx, on_a.session).reused
            assert get(b.port, cctx, on_b.session).reused
            assert not get(b.port, cctx, on_a.session).reused
            assert not get(a.port, cctx, on_b.session).reused
            stop(proc)
    assert ring.encrypting_key(now) is not None
    assert not (dir_a / f"{encrypting(ring, now).hex()}.key").exists()  # no ring key leaves


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEK_")}
    return subprocess.run([sys.executable, "-m", "stek.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_a_mistyped_export_path_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "stek"
    store = f"file:{tmp_path / 'ring.json'}"
    r = run("agent", "--no-metrics", "--store", store, "--export", f"nginx:{missing}/nginx")
    assert r.returncode == 2, r.stderr
    line, = r.stderr.strip().splitlines()
    assert f"{missing} does not exist" in line, line
    assert run("init", "--store", store).returncode == 0
    r = run("export", "--store", store, "--format", "nginx", "--out", f"{missing}/nginx")
    assert r.returncode != 0 and f"{missing} does not exist" in r.stderr, r.stderr
    r = run("export", "--store", store, "--format", "haproxy", "--out", f"{missing}/h.keys")
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
    assert not (tmp_path / "nonexistent").exists()
    # Only the last component is created, and that is said.
    r = run("export", "--store", store, "--format", "nginx", "--out", f"{tmp_path}/nginx")
    assert r.returncode == 0, r.stderr
    assert f"created directory {tmp_path}/nginx" in r.stderr
    assert (tmp_path / "nginx" / "tickets.conf").exists()


@TLS_VERSIONS
def test_a_scope_per_export_reaches_haproxy_through_the_runtime_api(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    store, _, now = rings(tmp_path)
    ring = store.read()
    keys_a, keys_b = tmp_path / "a.keys", tmp_path / "b.keys"
    for k in (keys_a, keys_b):
        export("haproxy", ring, now, k)  # unscoped until the agent runs
    cctx = client_context(certs, tls_version)
    log = tmp_path / "agent.log"
    with haproxy(tmp_path, certs, keys_a, "a") as a, haproxy(tmp_path, certs, keys_b, "b") as b:
        assert a.sock is not None and b.sock is not None
        cmd = agent_cmd(store, "--export", f"haproxy:{keys_a}", "--scope", "a",
                        "--haproxy-socket", str(a.sock),
                        "--export", f"haproxy:{keys_b}", "--scope", "b",
                        "--haproxy-socket", str(b.sock))
        with agent(cmd, log) as proc:
            on_a = serving(a, cctx, encrypting(scoped(ring, "a"), now), log)
            on_b = serving(b, cctx, encrypting(scoped(ring, "b"), now), log)
            assert get(a.port, cctx, on_a.session).reused
            assert get(b.port, cctx, on_b.session).reused
            assert not get(b.port, cctx, on_a.session).reused
            assert not get(a.port, cctx, on_b.session).reused
            stop(proc)
    assert "runtime API" in log.read_text()
