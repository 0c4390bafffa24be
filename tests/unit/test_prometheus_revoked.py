"""stek_server_revoked_keys counts what the ring still remembers, as ``stek status`` lists it."""

from __future__ import annotations

from types import SimpleNamespace

from stek.contrib.prometheus import _health
from stek.rotation import init_ring, revoke
from stek.schedule import Policy
from stek.stores.memory import MemoryStore

T = 1_900_000_000


def test_revoked_names_past_their_instant_are_not_counted() -> None:
    """The stored ring keeps a revoked name until its next change, past the instant
    its key would have expired; the gauge stops counting it at that instant."""
    store = MemoryStore()
    init_ring(store, Policy(rotate_every=3600, accept_for=7200, publish_ahead=60), now=T)
    revoke(store, None, now=T + 10)
    ring = store.read()
    assert len(ring.revoked) == 1
    (_, until), = ring.revoked
    handle = SimpleNamespace(ring=ring)
    assert _health(handle, until - 1)["stek_server_revoked_keys"] == 1  # type: ignore[arg-type]
    assert _health(handle, until)["stek_server_revoked_keys"] == 0  # type: ignore[arg-type]
