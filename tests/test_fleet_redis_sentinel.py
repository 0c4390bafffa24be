"""Redis as production runs it: a TLS primary, one replica, three Sentinels, an ACL user.

Certificates and passwords are made by the test; everything listens on
127.0.0.1 only, over TLS only (``port 0``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Certs
from fleet_failover import Run, check_ring, failover_run
from fleet_tls import Pki, make_pki
from servers_fleet import RedisSentinelSet
from stek import open_store
from stek.stores.base import health_of

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def redis_set(tmp_path: Path, pki: Pki) -> Iterator[RedisSentinelSet]:
    rs = RedisSentinelSet(tmp_path / "redis", pki)
    rs.start()
    try:
        yield rs
    finally:
        rs.stop()


def test_primary_killed_mid_rotation_loses_no_key(redis_set: RedisSentinelSet, certs: Certs,
                                                   kek_file: Path, tmp_path: Path) -> None:
    old = redis_set.primary()

    def script(run: Run) -> None:
        time.sleep(6)
        run.marks["killed"] = time.time()
        redis_set.kill(old)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if redis_set.primary() != old:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        run.marks["promoted"] = time.time()

    run = failover_run(redis_set.url, redis_set.url, certs, kek_file, tmp_path, script,
                       length=30)
    assert redis_set.primary() != old  # Sentinel promoted the replica
    assert run.failures == []
    assert run.handshakes >= 100
    assert run.resumed >= run.handshakes - 2
    assert len(run.pids) == 2
    check_ring(run, redis_set.url, kek_file)
    # Rotation continued on the new primary.
    assert any(a > run.marks["promoted"] for _, a in run.added)


def test_health_shows_sentinels_primary_tls_and_user(redis_set: RedisSentinelSet,
                                                     kek_file: Path) -> None:
    store = open_store(redis_set.url, kek_file=str(kek_file))
    h = health_of(store)
    assert h.engine == "redis+sentinel" and h.tls and h.user == "stek"
    assert [e.role for e in h.endpoints] == ["sentinel"] * 3 + ["primary"]
    assert all(e.reachable for e in h.endpoints)
    assert h.primary == f"127.0.0.1:{redis_set.nodes[redis_set.primary()].port}"
    assert h.replicas == 1
    assert redis_set.password not in repr(h) + store.url


def test_acl_user_is_confined_to_its_prefix(redis_set: RedisSentinelSet, kek_file: Path) -> None:
    from stek import Policy, StoreUnavailable, init_ring

    other = open_store(redis_set.url_for("elsewhere"), kek_file=str(kek_file))
    with pytest.raises(StoreUnavailable, match="NoPermission") as info:
        init_ring(other, Policy())
    assert redis_set.password not in str(info.value)
