"""A store writer without the KEK cannot steer servers (real redis-server and etcd).

Whoever can write Redis or etcd, but lacks the key-encryption key, can still
move genuine sealed values around: replay an older one, or copy in the ring
of another prefix sealed under the same KEK.  Running servers refuse both and
keep resuming under the snapshot they hold (real handshakes, the callback
counted); fresh readers refuse the foreign ring; the CLI says so in one line.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.certs import Certs, client_context
from helpers.fleet_scenarios import ask, server_procs, shared, with_prefix
from helpers.store_servers import EtcdServer, RedisServer, child_env
from helpers.waiting import wait_until
from stek import Keyring, Policy, SealingError, init_ring
from stek.agent import Agent, AgentCollector
from stek.keys import generate_key

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]


@pytest.fixture(params=["redis", "etcd"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    cls = RedisServer if request.param == "redis" else EtcdServer
    srv = cls(tmp_path / request.param)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def raw_put(server: Any, key: str, value: bytes) -> None:
    """Write a value as a store writer without the KEK would: a bare client."""
    if isinstance(server, RedisServer):
        import redis

        c = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            c.set(key, value)
            c.publish(key.rsplit(":", 1)[0] + ":changed", "x")
        finally:
            c.close()
    else:
        server._post("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                    "value": base64.b64encode(value).decode()})


def fresh_key(now: int) -> Any:
    return generate_key(size=80, activates_at=now - 5, retires_at=now + 1800,
                        expires_at=now + 3600)


def cli_status(url: str, kek_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stek", "status", "--store", url],
                          env=child_env(STEK_KEK_FILE=str(kek_file)), capture_output=True,
                          text=True, timeout=60)


def refused_in_log(log: Path, text: str) -> Callable[[], bool]:
    return lambda: text in log.read_text()


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls12", "tls13"])
def test_replayed_older_value_is_refused_by_a_running_server(
        server: Any, certs: Certs, kek_file: Path, tmp_path: Path,
        tls_version: ssl.TLSVersion) -> None:
    store = shared(server.url, kek_file)
    init_ring(store, Policy())
    old = store.read_raw()
    assert old is not None
    agent = Agent(shared(server.url, kek_file))
    agent.step()
    cctx = client_context(certs, tls_version)
    with server_procs(1, certs, server.url, kek_file, tmp_path) as (proc,):
        # The newer ring drops every key of the old one: under the old ring,
        # a ticket of the newer one would get a full handshake.
        now = int(time.time())
        newer = store.update(lambda cur: Keyring(cur.policy, (fresh_key(now),),
                                                 cur.generation + 1) if cur else None)
        wait_until(lambda: ask(proc.port, cctx).doc["generation"] == newer.generation, 10)
        first = ask(proc.port, cctx)
        agent.step()
        raw_put(server, store.key, old)
        wait_until(refused_in_log(proc.log, "rolled-back"), 10)
        for _ in range(3):
            again = ask(proc.port, cctx, first.session)
            assert again.reused
            assert again.doc["generation"] == newer.generation
            assert again.doc["keys"] == [k.name.hex() for k in newer.keys]
        assert again.doc["counters"]["resumed"] >= 3  # the callback ran: stek's key resumed
        assert again.doc["failures"] == []
    assert "Traceback" not in proc.log.read_text()
    # The agent never rotates from the replayed value: it counts it and writes
    # its newer ring back over it, above every generation seen.
    agent.step()
    restored = shared(server.url, kek_file).read()
    assert restored.keys == newer.keys and restored.generation > newer.generation
    assert agent.store_error is None
    metrics = {m.name: m.samples[0].value for m in AgentCollector(agent).collect() if m.samples}
    assert metrics["stek_store_rollbacks_refused"] == 1
    assert metrics["stek_store_reseeds"] == 1


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls12", "tls13"])
def test_ring_copied_from_another_prefix_is_refused(
        server: Any, certs: Certs, kek_file: Path, tmp_path: Path,
        tls_version: ssl.TLSVersion) -> None:
    prod = shared(server.url, kek_file)
    ring = init_ring(prod, Policy()).ring
    staging = shared(with_prefix(server.url, "staging"), kek_file)
    init_ring(staging, Policy())
    cctx = client_context(certs, tls_version)
    with server_procs(1, certs, server.url, kek_file, tmp_path) as (proc,):
        first = ask(proc.port, cctx)
        copied = staging.read_raw()
        assert copied is not None
        raw_put(server, prod.key, copied)
        wait_until(refused_in_log(proc.log, "sealed for another store"), 10)
        again = ask(proc.port, cctx, first.session)
        assert again.reused
        assert again.doc["keys"] == [k.name.hex() for k in ring.keys]
        assert again.doc["counters"]["resumed"] >= 1
    # A fresh reader refuses it too: in the library, and in the CLI in one line.
    with pytest.raises(SealingError, match="sealed for another store"):
        shared(server.url, kek_file).read()
    done = cli_status(server.url, kek_file)
    assert done.returncode in (1, 2)
    assert "sealed for another store" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_migrate_and_rekey_reseal_for_the_destination(
        server: Any, kek_file: Path, tmp_path: Path) -> None:
    src = shared(with_prefix(server.url, "from"), kek_file)
    ring = init_ring(src, Policy()).ring
    env = child_env(STEK_KEK_FILE=str(kek_file))
    dst_url = with_prefix(server.url, "to")
    subprocess.run([sys.executable, "-m", "stek", "migrate", "--from",
                    with_prefix(server.url, "from"), "--to", dst_url],
                   env=env, check=True, capture_output=True, timeout=60)
    assert shared(dst_url, kek_file).read().keys == ring.keys
    new_kek = tmp_path / "new.kek"
    subprocess.run([sys.executable, "-m", "stek", "kek", str(new_kek)], env=env, check=True,
                   capture_output=True, timeout=60)
    subprocess.run([sys.executable, "-m", "stek", "rekey", "--store", dst_url,
                    "--new-kek-file", str(new_kek)], env=env, check=True, capture_output=True,
                   timeout=60)
    assert shared(dst_url, new_kek).read().keys == ring.keys
