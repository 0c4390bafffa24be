"""Redis as production runs it: a TLS primary, one replica, three Sentinels, an ACL user.

Certificates and passwords are made by the test; everything listens on
127.0.0.1 only, over TLS only (``port 0``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.certs import Certs
from helpers.failover_scenario import FailoverRun, check_ring, failover_run
from helpers.pki import Pki, make_pki
from helpers.store_servers import RedisSentinelSet
from helpers.waiting import wait_until
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

    def script(run: FailoverRun) -> None:
        run.mark("start")
        # The fleet at work: both servers answering, the rotators writing.
        wait_until(lambda: len(run.pids) == 2 and run.handshakes_since("start") >= 30
                   and run.rotated_ok_after(run.marks["start"]), timeout=60, step=0.05)
        run.mark("killed")
        redis_set.kill(old)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if redis_set.primary() != old:
                    break
            except Exception:
                pass
            time.sleep(0.2)
        run.mark("promoted")
        # Rotation goes on on the new primary; and enough handshakes in all for the
        # counts below to mean something.
        wait_until(lambda: run.added_after(run.marks["promoted"]) and run.handshakes >= 100,
                   timeout=60, step=0.05)

    run = failover_run(redis_set.url, redis_set.url, certs, kek_file, tmp_path, script)
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


def _replica_backlog(admin: Any) -> int:
    """Bytes the primary holds for its replica, not yet taken by the replica's socket."""
    return max((int(c.get("omem", 0)) for c in admin.client_list(_type="replica")), default=0)


def test_failover_that_loses_an_unreplicated_rotation(redis_set: RedisSentinelSet,
                                                      kek_file: Path) -> None:
    """A rotation the primary accepts but no replica acknowledges, then a failover.

    The replica is stalled (SIGSTOP) behind a backlog larger than its socket
    can hold, so the rotation's write stays in the primary's memory and dies
    with it.  A server's backstop read has seen it meanwhile.  The write, and
    the next pass that finds it, are reported as failed; after the failover
    the server refuses the older ring (rollback) and keeps its snapshot, whose
    new key is still pending; the rotator re-issues the ring above the lost
    generation and rotates on from it, and the server converges on it, the
    lost key gone, without any permanent refusal.
    """
    from stek import Policy, SealingError, StoreUnavailable, rotate

    rotator = open_store(redis_set.url + "&wait_timeout=500ms", kek_file=str(kek_file))
    server = open_store(redis_set.url, kek_file=str(kek_file))  # as install()'s refresher reads
    # Short slots, so that the next slot's key is one readers accept now
    # (activating within publish_ahead, plus their 5 minutes of clock skew).
    policy = Policy(rotate_every=240, accept_for=600, publish_ahead=120)
    # 117 s into a slot, publish_ahead does not reach the next slot yet: the
    # ring holds only the current key, and the pass below must not skip a slot.
    now = int(time.time())
    t0 = now - (now - 117) % 240
    rotate(rotator, now=t0, create=policy)
    before = server.read()
    # The first slot the ring does not cover yet; a pass 60 s before it finds
    # the ring's last key current and adds exactly that slot's key.
    slot = max(k.retires_at for k in before)
    when = slot - 60  # a pass inside its publish_ahead
    old = redis_set.primary()
    replica = redis_set.nodes[1 - old]
    assert replica.proc is not None
    admin = redis_set._admin(redis_set.nodes[old])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the replica has acknowledged everything so far
        info = admin.info("replication")
        if info["slave0"]["offset"] >= info["master_repl_offset"]:
            break
        time.sleep(0.05)
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        i = 0
        while _replica_backlog(admin) < 1 << 20:
            admin.set(f"ballast:{i}", b"x" * (1 << 20))
            i += 1
        with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
            rotate(rotator, now=when)
        seen = server.read()  # on the primary: a server's periodic read finds it
        lost = {k.name for k in seen} - {k.name for k in before}
        assert lost and seen.generation == before.generation + 1
        # Found there by the next pass, it does not count either.
        with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
            rotate(rotator, now=when)
        redis_set.kill(old)
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
        admin.close()

    refused = None
    deadline = time.monotonic() + 40
    while refused is None and time.monotonic() < deadline:
        try:
            server.read()
        except SealingError as exc:
            refused = exc
        except StoreUnavailable:
            time.sleep(0.2)  # until Sentinel names the promoted replica
    assert refused is not None and "older than generation" in str(refused)
    assert server.rollbacks_refused == 1

    result = None
    while result is None and time.monotonic() < deadline:
        try:
            result = rotate(rotator, now=when)
        except StoreUnavailable:
            time.sleep(0.2)
    assert result is not None and rotator.lost_writes_reissued == 1
    assert len(result.added) == 1 and result.added[0].name not in lost
    ring = server.read()  # admitted: a generation above the lost one
    assert ring.generation == result.ring.generation > seen.generation
    names = {k.name for k in ring}
    assert not names & lost and result.added[0].name in names
    assert {k.name for k in before} <= names
