"""``stek revoke``: a key that may have leaked stops opening tickets everywhere.

End to end, on a real Redis and a real etcd, under TLS 1.2 and 1.3: two
Python servers on the fleet store, one on the mirror ``stek agent --mirror``
keeps (an in-process Agent, as the command builds it), an nginx 1.22 fed by
the agent's export and reloaded by it, an HAProxy 2.6 updated through its
runtime API.  Each issues a ticket under the active key; the real ``stek
revoke --all`` runs; then each gives that ticket a full handshake, and
fresh tickets resume again.  Also the command's errors and its unit cases.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.store_servers import EtcdServer, RedisServer, child_env
from helpers.tls_peers import connect, serving
from helpers.waiting import holds_within
from helpers.web_servers import get, haproxy, nginx
from stek.agent import Agent, AgentCollector, Target, TargetSpec
from stek.errors import ConfigError, NotInitialized
from stek.export import export
from stek.mirror import open_mirror
from stek.rotation import init_ring, revoke
from stek.schedule import Policy
from stek.stores import MemoryStore, open_store

POLICY = Policy(rotate_every=3600, accept_for=3600, publish_ahead=60)


def away_from_a_rotation(now: float) -> Policy:
    """POLICY, or the same with a slightly longer slot, whichever leaves the key
    active at ``now`` at least five minutes before it retires (slots are aligned
    on multiples of rotate_every since the epoch, so a fixed policy run just
    before the hour would see the key retire mid-test)."""
    for every in range(3600, 7200, 300):
        if every - now % every >= 300:
            return Policy(rotate_every=every, accept_for=POLICY.accept_for,
                          publish_ahead=POLICY.publish_ahead)
    raise AssertionError("no slot length leaves five minutes before a rotation")


def wait_for(pred: Callable[[], bool], timeout: float = 20.0) -> bool:
    return holds_within(pred, timeout)


def stek_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stek.cli", *args], capture_output=True,
                          text=True, timeout=60, env=child_env())


@pytest.mark.servers
@pytest.mark.parametrize("engine", ["redis", "etcd"])
@TLS_VERSIONS
def test_revoke_all_reaches_every_consumer(
        engine: str, tls_version: ssl.TLSVersion, tmp_path: Path, certs: Certs,
        kek_file: Path, no_kek_env: None) -> None:
    backend = (RedisServer if engine == "redis" else EtcdServer)(tmp_path / engine)
    cctx = client_context(certs, tls_version)
    with ExitStack() as stack:
        backend.start()
        stack.callback(backend.stop)
        url = backend.url

        def store() -> stek.KeyStore:
            s = open_store(url, kek_file=str(kek_file))
            stack.callback(s.close)
            return s

        now = time.time()
        init_ring(store(), away_from_a_rotation(now), now=now)
        ring = store().read()
        old = ring.encrypting_key(now)
        assert old is not None and old.retires_at - now > 120, "too close to a rotation"

        # The agent's targets, started on the files it exports.
        out, hkeys = tmp_path / "nginx-keys", tmp_path / "haproxy.keys"
        export("nginx", ring, now, out)
        export("haproxy", ring, now, hkeys)
        ngx = stack.enter_context(nginx(tmp_path, certs, out / "tickets.conf"))
        hap = stack.enter_context(haproxy(tmp_path, certs, hkeys))
        targets = [Target(TargetSpec("nginx", out, reloads=(f"kill -HUP {ngx.pid}",))),
                   Target(TargetSpec("haproxy", hkeys, haproxy_sockets=(hap.sock,)))]
        agent = Agent(store(), targets=targets)
        mirror_path = tmp_path / "mirror" / "keyring.json"
        open_mirror(f"file:{mirror_path}", None, agent.store).attach(agent)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(agent.stop)
        assert wait_for(lambda: agent.passes > 0 and mirror_path.exists())

        # Python servers: two on the fleet store, one on the mirror.
        pys = []
        for where in (store(), store(), f"file:{mirror_path}"):
            ctx = server_context(certs)
            inst = stek.install(ctx, where)
            stack.callback(inst.uninstall)
            pys.append((inst, stack.enter_context(serving(ctx))))
        assert wait_for(lambda: all(i.ring.find(old.name) is not None for i, _ in pys))

        # Before: every consumer's ticket is under the active key and resumes.
        py_sessions = []
        for inst, srv in pys:
            s = connect(srv.port, cctx).session
            r = connect(srv.port, cctx, s)
            assert r.reused and inst.counters.resumed >= 1
            py_sessions.append(s)
        web = {"nginx": ngx.port, "haproxy": hap.port}
        web_sessions = {}
        for name, port in web.items():
            hit = get(port, cctx)
            assert hit.name == old.name and get(port, cctx, hit.session).reused, name
            web_sessions[name] = hit.session

        nginx_workers = ngx.children()
        done = stek_cmd("revoke", "--all", "--store", url, "--kek-file", str(kek_file))
        assert done.returncode == 0, done.stderr
        assert f"revoked {old.name.hex()}" in done.stdout
        after = store().read()
        assert after.find(old.name) is None and after.encrypting_key(time.time()) is not None
        assert after.generation > ring.generation

        # After: every consumer follows and gives the old ticket a full handshake.
        for (inst, srv), s in zip(pys, py_sessions, strict=True):
            assert wait_for(lambda inst=inst: inst.ring.generation >= after.generation)
            resumed = inst.counters.resumed
            r = connect(srv.port, cctx, s)
            assert not r.reused and inst.counters.resumed == resumed
            assert connect(srv.port, cctx, connect(srv.port, cctx).session).reused
        new = after.encrypting_key(time.time())
        assert new is not None
        # nginx reloads: its old workers, on the old keys, must be gone first.
        assert wait_for(lambda: ngx.reloaded(nginx_workers)), ngx.children()
        for name, port in web.items():
            assert wait_for(lambda port=port: get(port, cctx).name == new.name), name
            assert not get(port, cctx, web_sessions[name]).reused, name
            fresh = get(port, cctx)
            assert get(port, cctx, fresh.session).reused, name
        assert hap.proc is not None and hap.proc.poll() is None  # no HAProxy reload
        assert agent.revocations == len(ring) and agent.store_error is None
        metrics = CollectorRegistry()
        metrics.register(AgentCollector(agent))
        assert metrics.get_sample_value("stek_keys_revoked_total") == len(ring)


def test_revoke_one_key_keeps_the_others_and_a_fresh_active_key() -> None:
    t = 1_900_000_000
    store = MemoryStore()
    ring = init_ring(store, POLICY, now=t).ring
    ring = stek.rotate(store, now=t + POLICY.rotate_every - 30).ring  # next key published
    active, pending = ring.keys
    done = revoke(store, [active.name], now=t + 10)
    assert done.revoked == (active.name,)
    now_ring = store.read()
    assert now_ring.find(active.name) is None and now_ring.find(pending.name) is not None
    fresh = now_ring.encrypting_key(t + 10)
    assert fresh is not None and fresh.activates_at <= t + 10  # active at once
    assert dict(now_ring.revoked) == {active.name: active.expires_at}
    assert now_ring.generation > ring.generation
    # Remembered until the key would have expired, then forgotten.
    later = stek.rotate(store, now=active.expires_at + 1).ring
    assert later.revoked == ()


def test_server_metrics_count_revoked_keys(certs: Certs) -> None:
    from prometheus_client import CollectorRegistry

    from stek.contrib.prometheus import register

    store = MemoryStore()
    ring = init_ring(store, POLICY).ring
    inst = stek.install(server_context(certs), store)
    try:
        registry = CollectorRegistry()
        register(inst, registry)
        assert registry.get_sample_value("stek_server_revoked_keys") == 0
        revoke(store, None)
        assert wait_for(lambda: inst.ring.generation > ring.generation, 10)
        assert registry.get_sample_value("stek_server_revoked_keys") == len(ring)
    finally:
        inst.uninstall()


def test_revoke_errors_change_nothing() -> None:
    store = MemoryStore()
    with pytest.raises(NotInitialized, match="nothing to revoke"):
        revoke(store, None)
    ring = init_ring(store, POLICY).ring
    with pytest.raises(ConfigError, match=r"no key named (00){15}ff"):
        revoke(store, [bytes(15) + b"\xff"])
    assert store.read() == ring


@pytest.mark.parametrize(("args", "message", "status"), [
    ([], "name the keys to revoke, or give --all", 2),
    (["--all", "00" * 16], "name the keys to revoke, or give --all", 2),
    (["xyz"], "key name 'xyz' is not 32 hex digits", 2),
    (["00" * 16], "no key named " + "00" * 16, 2),
    (["--all", "--store", "file:{tmp}/missing.json"], "no keyring yet, nothing to revoke", 1),
])
def test_revoke_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str,
                                        status: int) -> None:
    path = tmp_path / "ring.json"
    init_ring(stek.open_store(f"file:{path}"), POLICY)
    before = path.read_bytes()
    full = [a.format(tmp=tmp_path) for a in args]
    if "--store" not in full:
        full += ["--store", f"file:{path}"]
    done = stek_cmd("revoke", *full)
    assert done.returncode == status
    assert done.stderr.strip().splitlines()[-1].startswith("stek: error: ")
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == before
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_revoke_help_explains() -> None:
    done = stek_cmd("revoke", "--help")
    assert done.returncode == 0
    assert "--all" in done.stdout and "may have leaked" in done.stdout
