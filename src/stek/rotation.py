"""Rotation: apply :func:`stek.schedule.plan` to a store, atomically.

The plan is computed *inside* the store's atomic update, from the ring the
store holds at that instant.  N rotators racing on one ring therefore leave
the ring that one rotator would: the first writes the slot's key, the others
see it there and plan nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError, KeyringError, NotInitialized, StekError, StoreCorrupt
from .keyring import Keyring, next_generation
from .keys import TicketKey
from .schedule import Plan, Policy, plan
from .stores import KeyStore

log = logging.getLogger("stek.rotation")


@dataclass(frozen=True)
class Rotation:
    """The outcome of one rotation: the ring now stored and what changed."""

    ring: Keyring
    added: tuple[TicketKey, ...] = ()
    dropped: tuple[bytes, ...] = ()
    created: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.added or self.dropped or self.created)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def init_ring(
    store: KeyStore, policy: Policy | None = None, *, now: float | None = None,
    force: bool = False,
) -> Rotation:
    """Create the ring with ``policy`` and its first keys.

    On an existing ring this raises, unless ``force``: then the policy is
    replaced and the keys are kept (and the schedule re-applied).
    """
    pol = policy or Policy()
    t = _now(now)
    outcome: dict[str, Rotation] = {}

    def mutate(current: Keyring | None) -> Keyring:
        if current is not None and not force:
            raise StekError(
                f"{store.url}: a keyring already exists; use --force to change its policy "
                f"(its keys are kept)"
            )
        base = _new_ring(pol) if current is None else current.with_policy(pol)
        # A shorter publish_ahead: keys published further ahead than it now
        # allows are dropped (readers would refuse them); plan() refills the gap.
        early = tuple(k.name for k in base.keys if k.activates_at > t + pol.publish_ahead)
        change = plan([k for k in base.keys if k.name not in early], pol, t)
        change = Plan(change.add, change.drop + early)
        ring = base.apply(change)
        outcome["r"] = Rotation(ring, change.add, change.drop, created=current is None)
        return ring

    store.update(mutate)
    return outcome["r"]


def rotate(
    store: KeyStore, *, now: float | None = None, create: Policy | None = None
) -> Rotation:
    """Bring the ring up to date for ``now``: add the keys due, drop the expired.

    Idempotent: a second call in the same slot changes nothing.  With
    ``create``, an empty store is initialized with that policy instead of
    raising :class:`~stek.errors.NotInitialized`.
    """
    t = _now(now)
    outcome: dict[str, Rotation] = {}

    def mutate(current: Keyring | None) -> Keyring:
        created = False
        if current is None:
            if create is None:
                raise NotInitialized(f"{store.url}: no keyring yet (run 'stek init')")
            current, created = _new_ring(create), True
        _check(current, t, store.url)
        change = plan(current.keys, current.policy, t)
        # A change also forgets revocations whose key would have expired by now.
        ring = current.apply(change).without({}, t)
        outcome["r"] = Rotation(ring, change.add, change.drop, created=created)
        return ring

    ring = store.update(mutate)
    result = outcome.get("r", Rotation(ring))
    if result.ring is not ring:  # the store kept another ring (no change needed)
        result = Rotation(ring)
    for k in result.added:
        log.info(
            "added key %s (activates %s, retires %s, expires %s)",
            k.name.hex(), _iso(k.activates_at), _iso(k.retires_at), _iso(k.expires_at),
        )
    for name in result.dropped:
        log.info("dropped expired key %s", name.hex())
    return result


def _new_ring(policy: Policy) -> Keyring:
    """An empty ring numbered from the wall clock (keyring.next_generation), so
    that readers which saw a ring this store held before do not refuse it."""
    return Keyring(policy, generation=next_generation(-1, time.time()))


@dataclass(frozen=True)
class Revocation:
    """The outcome of :func:`revoke`: the ring now stored and the keys taken out."""

    ring: Keyring
    revoked: tuple[bytes, ...]
    added: tuple[TicketKey, ...]


def revoke(store: KeyStore, names: Sequence[bytes] | None, *,
           now: float | None = None) -> Revocation:
    """Take the keys ``names`` (every key when None) out of the ring, at once.

    The ring is re-planned at ``now`` without them, so that when the active
    key goes a fresh one is active immediately, and numbered from the wall
    clock (above its generation).  The names are remembered in the ring
    until each key would have expired, so that a process holding an older
    snapshot cannot bring one back (stores/shared.py, SharedStore._remember).  An unknown name
    raises ConfigError and changes nothing.
    """
    t = _now(now)
    outcome: dict[str, Revocation] = {}

    def mutate(current: Keyring | None) -> Keyring:
        if current is None:
            raise NotInitialized(f"{store.url}: no keyring yet, nothing to revoke")
        wanted = [k.name for k in current.keys] if names is None else list(names)
        unknown = [n.hex() for n in wanted if current.find(n) is None]
        if unknown:
            raise ConfigError(f"{store.url}: no key named {', '.join(unknown)} in the ring "
                              f"(see 'stek status')")
        if not wanted:
            raise ConfigError(f"{store.url}: the ring holds no key to revoke")
        gone = {n: current.find(n).expires_at for n in wanted}  # type: ignore[union-attr]
        base = current.without(gone, t)
        base = base.at_generation(next_generation(current.generation, time.time()) - 1)
        change = plan(base.keys, base.policy, t)
        ring = base.apply(change) if not change.empty else base.at_generation(base.generation + 1)
        outcome["r"] = Revocation(ring, tuple(wanted), change.add)
        return ring

    store.update(mutate)
    result = outcome["r"]
    log.warning("revoked %d key(s): %s; keyring generation %d, %d key(s) added",
                len(result.revoked), ", ".join(n.hex() for n in result.revoked),
                result.ring.generation, len(result.added))
    return result


def _check(ring: Keyring, now: float, where: str) -> None:
    """Refuse to rotate (and so to export) a ring holding a key its policy forbids.

    "Too far ahead" is measured from the later of ``now`` and the wall
    clock: a rotation planned for another instant (a test, a replay of a
    schedule) judges keys by the latest time it knows of.
    """
    try:
        ring.check(max(now, time.time()))
    except KeyringError as exc:
        raise StoreCorrupt(f"{where}: invalid keyring ({exc})") from exc


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
