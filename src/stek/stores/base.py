"""The one interface every key store implements.

A store holds one serialized :class:`~stek.keyring.Keyring`.  It offers a
snapshot read, an atomic read-modify-write (so that racing rotators write
exactly one key per slot, with no leader), and change notification so that
servers see another process's rotation quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..keyring import Keyring

#: ``update``'s mutator: given the current ring (None if the store is empty),
#: return the ring to write, or the same object / None to leave it unchanged.
Mutator = Callable[[Keyring | None], Keyring | None]


class Subscription(Protocol):
    def close(self) -> None: ...


@runtime_checkable
class KeyStore(Protocol):
    #: The store's URL with any password removed (safe to log).
    url: str

    def read(self) -> Keyring:
        """The current ring.  Raises NotInitialized, StoreCorrupt, StoreUnavailable."""
        ...

    def update(self, mutate: Mutator) -> Keyring:
        """Atomically apply ``mutate`` and return the ring now stored.

        ``mutate`` may run more than once (optimistic stores retry on
        conflict), so it must be a pure function of its argument.
        """
        ...

    def subscribe(self, on_change: Callable[[], None]) -> Subscription:
        """Call ``on_change()`` (from another thread) soon after the ring changes.

        Notifications may be spurious or coalesced; consumers re-read.
        """
        ...

    def close(self) -> None: ...
