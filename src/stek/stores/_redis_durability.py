"""Durability of a Redis write across a failover: ``WAIT`` for a replica, and what it saw.

Redis replicates asynchronously, so a write acknowledged by a primary that
dies before replicating is lost
(https://redis.io/docs/latest/operate/oss_and_stack/management/replication/).
A write counts only once ``WAIT``, on the connection that wrote
(https://redis.io/docs/latest/commands/wait/), reports it on ``need``
replicas; :class:`Durability` remembers the last value a replica
acknowledged, which :class:`~stek.stores.redis.RedisStore` re-issues when a
failover lost the one generation above it (:class:`LostWrites`).
"""

from __future__ import annotations

from ..errors import SealingError, StoreUnavailable
from ._redis_cas import Link


class LostWrites(Exception):
    """Signal, inside :meth:`RedisStore.update`: the ring is back at the last value a
    replica acknowledged, below a generation seen.  Never leaves the store: it
    re-issues that value, or raises :meth:`error`."""

    def __init__(self, url: str, generation: int, seen: int) -> None:
        super().__init__(url, generation, seen)
        self.url = url
        self.generation = generation
        self.seen = seen

    def error(self) -> SealingError:
        """The refusal a caller sees when the ring cannot be re-issued."""
        return SealingError(
            f"{self.url}: holds keyring generation {self.generation}, older than generation "
            f"{self.seen} already seen: refusing a rolled-back (replayed) ring")


class Durability:
    """How many replicas a write must reach, and the values seen acknowledged."""

    def __init__(self, url: str, min_replicas: int | None, wait_timeout: float) -> None:
        self.url = url
        #: None: 1 when the primary has replicas connected, 0 when it has none.
        self.min_replicas = min_replicas
        self.wait_timeout = wait_timeout
        #: The last value this object saw a replica acknowledge (WAIT), and the
        #: last one it needs not confirm again (acknowledged, or written or read
        #: while the primary had no replica to wait for).
        self.confirmed: bytes | None = None
        self.settled: bytes | None = None

    def need(self, link: Link) -> int:
        """Replicas a write must reach: ``min_replicas``, or (auto) 1 if the primary has one."""
        if self.min_replicas is not None:
            return self.min_replicas
        role = link.call("ROLE")
        return 1 if role and role[0] in (b"master", "master") and role[2] else 0

    def wait(self, link: Link, need: int, value: bytes, what: str) -> None:
        """Until the link's writes (``value``) are on ``need`` replicas (``WAIT``), or raise."""
        if need:
            timeout = self.wait_timeout
            got = int(link.call("WAIT", need, int(timeout * 1000)))
            if got < need:
                raise StoreUnavailable(
                    f"{self.url}: {got} of {need} replica(s) acknowledged within {timeout:g}s: "
                    f"{what} not on a replica and may be lost in a failover, so it does not "
                    f"count")
            self.confirmed = value
        self.settled = value
