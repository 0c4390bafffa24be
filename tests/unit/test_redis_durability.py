"""WAIT durability of Redis writes, in process: what a write must reach and what it saw.

The failover paths themselves run against real Redis and Sentinel in
test_fleet_redis_sentinel.py; here the bookkeeping is checked on a scripted link.
"""

from __future__ import annotations

from typing import Any

import pytest

from stek.errors import SealingError, StekError, StoreUnavailable
from stek.stores._redis_durability import Durability, LostWrites


class ScriptedLink:
    """Answers ROLE and WAIT as a primary with ``replicas`` connected, ``acks`` acknowledging."""

    def __init__(self, replicas: int, acks: int) -> None:
        self.replicas, self.acks = replicas, acks
        self.calls: list[tuple[Any, ...]] = []

    def call(self, *args: Any) -> Any:
        self.calls.append(args)
        if args[0] == "ROLE":
            return [b"master", 0, [[b"127.0.0.1", b"1", b"0"]] * self.replicas]
        assert args[0] == "WAIT"
        return self.acks


def test_auto_needs_one_replica_only_when_the_primary_has_one() -> None:
    d = Durability("redis://h", None, 1.5)
    assert d.need(ScriptedLink(replicas=2, acks=0)) == 1  # type: ignore[arg-type]
    assert d.need(ScriptedLink(replicas=0, acks=0)) == 0  # type: ignore[arg-type]
    fixed = ScriptedLink(replicas=0, acks=0)
    assert Durability("redis://h", 3, 1.5).need(fixed) == 3  # type: ignore[arg-type]
    assert fixed.calls == []  # min_replicas given: no ROLE asked


def test_an_acknowledged_write_is_confirmed_and_settled() -> None:
    d = Durability("redis://h", 1, 0.25)
    link = ScriptedLink(replicas=1, acks=1)
    d.wait(link, 1, b"v1", "the write is")  # type: ignore[arg-type]
    assert (d.confirmed, d.settled) == (b"v1", b"v1")
    assert link.calls == [("WAIT", 1, 250)]


def test_an_unacknowledged_write_fails_and_is_not_confirmed() -> None:
    d = Durability("redis://h", 1, 1.5)
    d.confirmed = d.settled = b"v1"
    with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
        d.wait(ScriptedLink(replicas=1, acks=0), 1, b"v2", "the write is")  # type: ignore[arg-type]
    assert (d.confirmed, d.settled) == (b"v1", b"v1")


def test_without_replicas_to_wait_for_a_write_settles_but_is_not_confirmed() -> None:
    d = Durability("redis://h", None, 1.5)
    link = ScriptedLink(replicas=0, acks=0)
    d.wait(link, 0, b"v1", "the write is")  # type: ignore[arg-type]
    assert (d.confirmed, d.settled) == (None, b"v1")
    assert link.calls == []


def test_lost_writes_is_a_signal_and_its_refusal_a_sealing_error() -> None:
    lost = LostWrites("redis://h", 5, 7)
    assert not isinstance(lost, StekError)  # callers never catch it by mistake
    err = lost.error()
    assert isinstance(err, SealingError)
    assert str(err) == ("redis://h: holds keyring generation 5, older than generation 7 "
                        "already seen: refusing a rolled-back (replayed) ring")
