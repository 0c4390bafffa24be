"""The Redis ACL lines docs/fleet.md gives, exactly as written, on a real redis-server.

The rotating user (agents, ``stek rotate``) must be able to create and
rotate the ring, wait for replicas and announce changes; the server user
must be able to read and follow the ring and nothing more.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.certs import Certs, server_context
from helpers.fleet_scenarios import shared
from helpers.pki import Pki, make_pki, password_file
from helpers.store_servers import ROOT, RedisNode
from helpers.waiting import wait_until, wait_watching
from stek import Policy, StoreUnavailable, init_ring, install, rotate
from stek.stores.base import health_of

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

DOC = ROOT / "docs" / "fleet.md"


def documented_acl() -> dict[str, str]:
    """The ``user ...`` lines of docs/fleet.md's Redis section, by user name."""
    lines = re.findall(r"`(user stek[^`]*)`", DOC.read_text())
    return {line.split()[1]: line for line in lines}


class AclRedis:
    def __init__(self, tmp: Path, pki: Pki) -> None:
        self.pki = pki
        self.admin_pw = password_file(tmp, "admin")[1]
        self.rw_file, rw = password_file(tmp, "rw")
        self.ro_file, ro = password_file(tmp, "ro")
        acl = documented_acl()
        assert set(acl) == {"stek", "stek-server"}, acl
        # Only the placeholders change: the passwords are the test's own.
        lines = [acl["stek"].replace(">PASSWORD", f">{rw}"),
                 acl["stek-server"].replace(">PW", f">{ro}")]
        assert all(">" + p in line for p, line in zip((rw, ro), lines, strict=True))
        self.node = RedisNode(tmp / "redis", [f"requirepass {self.admin_pw}", *lines])
        self.node.write_conf(pki)

    def url(self, user: str, prefix: str = "stek", extra: str = "") -> str:
        p = self.pki
        pw = self.rw_file if user == "stek" else self.ro_file
        return (f"rediss://{user}@127.0.0.1:{self.node.port}/0?prefix={prefix}&cacert={p.ca}"
                f"&cert={p.client_cert}&key={p.client_key}&password_file={pw}{extra}")


@pytest.fixture
def redis_acl(tmp_path: Path) -> Iterator[AclRedis]:
    r = AclRedis(tmp_path, make_pki(tmp_path / "pki"))
    r.node.start()
    try:
        yield r
    finally:
        r.node.stop()


def test_rotating_user_creates_rotates_and_waits(redis_acl: AclRedis, kek_file: Path) -> None:
    step = 60
    base = 28_333_334 * step
    store = shared(redis_acl.url("stek"), kek_file)
    init_ring(store, Policy(rotate_every=step, accept_for=3600, publish_ahead=30), now=base)
    assert rotate(store, now=base + step).added  # GET, EVALSHA (SCRIPT LOAD), ROLE, PUBLISH
    assert health_of(store).endpoints[0].reachable
    # WAIT is allowed too: with no replica to answer, the write is refused for that
    # reason, not for a missing permission.
    waiting = shared(redis_acl.url("stek", "stekwait", "&min_replicas=1&wait_timeout=200ms"),
                     kek_file)
    with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
        init_ring(waiting, Policy())


def test_server_user_reads_and_follows_but_cannot_write(redis_acl: AclRedis, certs: Certs,
                                                         kek_file: Path) -> None:
    step = 60
    base = time.time()
    rw = shared(redis_acl.url("stek"), kek_file)
    first = init_ring(rw, Policy(rotate_every=step, accept_for=3600, publish_ahead=30),
                      now=base).ring
    ro = shared(redis_acl.url("stek-server"), kek_file)
    assert ro.read().generation == first.generation
    h = health_of(ro)
    assert h.user == "stek-server" and all(e.reachable for e in h.endpoints)
    # Follows: a server installed with the read-only user sees each rotation.
    inst = install(server_context(certs), shared(redis_acl.url("stek-server"), kek_file))
    try:
        wait_watching(inst)  # subscribed: each rotation below is announced to it
        for i in range(1, 3):
            r = rotate(rw, now=base + i * step)
            assert r.added
            wait_until(lambda r=r: inst.ring.generation == r.ring.generation, 5)
    finally:
        inst.uninstall()
    before = rw.read()
    # Cannot write: neither the compare-and-set nor a forced re-initialisation.
    attempts: list[Callable[[], object]] = [lambda: rotate(ro, now=base + 10 * step),
                                             lambda: init_ring(ro, Policy(), force=True)]
    for attempt in attempts:
        with pytest.raises(StoreUnavailable, match="NoPermission") as info:
            attempt()
        assert redis_acl.admin_pw not in str(info.value)
    after = rw.read()
    assert (after.generation, after.keys) == (before.generation, before.keys)
    # Confined to the prefix: another one is out of reach even to read.
    with pytest.raises(StoreUnavailable, match="NoPermission"):
        shared(redis_acl.url("stek-server", "other"), kek_file).read()
