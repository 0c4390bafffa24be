"""The one interface every key store implements.

A store holds one serialized :class:`~stek.keyring.Keyring`.  It offers a
snapshot read, an atomic read-modify-write (so that racing rotators write
exactly one key per slot, with no leader), and change notification so that
servers see another process's rotation quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from ..keyring import Keyring

#: ``update``'s mutator: given the current ring (None if the store is empty),
#: return the ring to write, or the same object / None to leave it unchanged.
Mutator = Callable[[Keyring | None], Keyring | None]


class Subscription(Protocol):
    def close(self) -> None: ...


@runtime_checkable
class KeyStore(Protocol):
    #: The store's URL with every secret removed (safe to log): the one form shown.
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


@dataclass(frozen=True)
class Endpoint:
    """One server of a store as stek sees it right now."""

    address: str
    reachable: bool
    #: "leader"/"follower" (etcd), "primary"/"replica"/"sentinel" (Redis), "" if unknown.
    role: str = ""
    #: Why it is unreachable (scrubbed; never a secret).
    error: str = ""


@dataclass(frozen=True)
class StoreHealth:
    """What ``stek status`` and the agent's metrics say about a store's servers."""

    engine: str
    #: The store's stable identity (scheme + prefix or path; no host, no credential).
    identity: str
    tls: bool
    #: The user stek authenticates as; None when it does not authenticate.
    user: str | None
    endpoints: tuple[Endpoint, ...] = ()
    #: The address of the etcd leader or Redis primary, when known.
    primary: str | None = None
    #: Redis: replicas the primary reports connected (None: not asked).
    replicas: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def health_of(store: KeyStore) -> StoreHealth:
    """``store.health()`` for fleet stores; local stores have nothing remote to reach."""
    probe = getattr(store, "health", None)
    if callable(probe):
        result = probe()
        if isinstance(result, StoreHealth):
            return result
    engine = type(store).__name__.removesuffix("Store").lower() or "store"
    identity = str(getattr(store, "identity", store.url))
    return StoreHealth(engine, identity, tls=False, user=None,
                       endpoints=(Endpoint("local", True, "local"),))
