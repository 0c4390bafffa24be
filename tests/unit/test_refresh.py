"""stek._refresh on its own: a group of fake members over an in-memory store.

No SSLContext and no installation: the group sees its members only as
``stek._refresh.Member``.  Its timers run on a ``Reactor`` whose clock the
test moves (docs/design.md, "Threads, fork and finalizers"), so the backstop
never fires by itself and a retry comes when the test says so.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Iterator

import pytest

from helpers.waiting import wait_until
from stek import _refresh
from stek._reactor import Reactor
from stek._refresh import Member, Membership
from stek.errors import StoreUnavailable
from stek.keyring import Keyring
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores.memory import MemoryStore


class FakeMember:
    """A member as a group needs it, recording what the group did to it."""

    def __init__(self, store: MemoryStore, *, rotate: bool = False) -> None:
        self.store = store
        self.rotate = rotate
        self.ring = Keyring(Policy())  # none read yet
        self.reads = 0
        self.swapped: list[int] = []
        self.reports = 0

    def clock(self) -> float:
        return 1_000_000.0

    def refresh(self) -> Keyring:
        self.reads += 1
        ring = self.store.read()
        self.swap(ring)
        return ring

    def swap(self, ring: Keyring) -> None:
        self.swapped.append(ring.generation)
        self.ring = ring

    def report(self) -> None:
        self.reports += 1


class FlakyStore(MemoryStore):
    """A memory store whose reads fail while ``down`` (its writes still announce)."""

    down = False

    def read(self) -> Keyring:
        if self.down:
            raise StoreUnavailable("memory store: down")
        return super().read()


class Loop:
    """The reactor the groups run on, with the clock its timers are due by."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reactor = Reactor(clock=lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.reactor.call_soon(lambda: None)  # wake the loop: it reads the clock again

    def flush(self) -> None:
        """Return once everything queued on the loop so far has run."""
        done = threading.Event()
        self.reactor.call_soon(done.set)
        assert done.wait(5)


@pytest.fixture
def loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    here = Loop()
    monkeypatch.setattr(_refresh, "REACTOR", here.reactor)
    yield here


def bump(store: MemoryStore) -> int:
    """Write the ring again under the next generation (the store announces it)."""
    return store.update(lambda ring: None if ring is None else
                        ring.at_generation(ring.generation + 1)).generation


def joined(store: MemoryStore, member: FakeMember) -> Membership:
    """What an owner does: join weakly, leave from its member's finalizer."""
    typed: Member = member  # the protocol, as the group sees it (a type checker checks it)
    membership = Membership()
    membership.join(store, weakref.ref(typed))
    weakref.finalize(member, membership.collected)
    membership.started(None)
    return membership


def test_one_read_per_change_swapped_into_every_member(loop: Loop) -> None:
    """However many announcements arrive before the loop gets to them, the
    group reads once, by its rotating member, and swaps that ring into the
    others; every member reports after the read."""
    store = MemoryStore()
    init_ring(store, Policy())
    follower, rotator = FakeMember(store), FakeMember(store, rotate=True)
    memberships = [joined(store, follower), joined(store, rotator)]
    assert memberships[0].group is memberships[1].group
    assert len(store._subs) == 1  # one subscription for the group
    gate, held = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        gate.wait(5)

    loop.reactor.call_soon(hold)  # the loop is busy until the gate opens
    assert held.wait(5)
    bump(store)
    generation = bump(store)  # a second announcement while the first is queued
    gate.set()
    wait_until(lambda: follower.ring.generation == generation, timeout=5)
    loop.flush()
    assert (rotator.reads, follower.reads) == (1, 0)
    assert rotator.swapped == follower.swapped == [generation]
    assert rotator.reports == follower.reports == 1
    assert all(m.store_ok and m.last_refresh is not None for m in memberships)
    for m in memberships:
        m.leave()
    assert store._subs == []


def test_a_failing_store_keeps_the_last_snapshot(loop: Loop,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A read that fails swaps nothing in, records store_ok False for every
    member and logs once; the group retries after RETRY_INTERVAL (by the
    reactor's clock) and the first good read is swapped in and logged."""
    store = FlakyStore()
    init_ring(store, Policy())
    member = FakeMember(store)
    membership = joined(store, member)
    first = bump(store)
    wait_until(lambda: member.ring.generation == first, timeout=5)
    loop.flush()
    assert membership.store_ok
    seen = membership.last_refresh
    store.down = True
    with caplog.at_level(logging.WARNING, logger="stek.installation"):
        bump(store)
        wait_until(lambda: not membership.store_ok, timeout=5)
        bump(store)  # announced again while down: still one warning
        loop.flush()
        assert member.ring.generation == first and member.swapped == [first]
        assert membership.last_refresh == seen
        lines = [r.getMessage() for r in caplog.records]
        assert len([m for m in lines if "serving the last snapshot" in m]) == 1
        store.down = False
        loop.advance(_refresh.RETRY_INTERVAL)
        wait_until(lambda: membership.store_ok, timeout=5)
    assert member.ring.generation == store.read().generation
    assert membership.last_refresh is not None and seen is not None
    assert membership.last_refresh >= seen
    assert any("is back" in r.getMessage() for r in caplog.records)
    membership.leave()


def test_a_collected_member_leaves_its_group(loop: Loop) -> None:
    """A group holds its members weakly: a collected one is skipped at once
    and leaves from the loop thread; the last one out closes the subscription
    and the group."""
    store = MemoryStore()
    init_ring(store, Policy())
    gone, kept = FakeMember(store), FakeMember(store)
    gone_membership, kept_membership = joined(store, gone), joined(store, kept)
    group = kept_membership.group
    assert group is not None
    del gone
    gc.collect()
    assert group.live() == [kept]
    wait_until(lambda: gone_membership not in group.members, timeout=5)
    assert gone_membership.stop.is_set()
    generation, swapped = bump(store), kept.swapped
    wait_until(lambda: swapped == [generation], timeout=5)
    assert len(store._subs) == 1
    del kept
    gc.collect()
    wait_until(lambda: store._subs == [], timeout=5)
    assert _refresh._GROUPS.get(id(store)) is None
    assert kept_membership.group is None
