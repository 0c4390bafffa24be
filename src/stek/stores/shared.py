"""What every fleet store (Redis, etcd) shares: one sealed value under optimistic concurrency.

:class:`SharedStore` holds one value sealed by :mod:`stek.stores.sealing`,
changed by a compare-and-set on its version (etcd's mod_revision, Redis's
current value), with a retry loop around ``mutate``, the refusal of a ring
older than one seen (rollbacks, replays) and the re-seeding of a store found
empty; :class:`WatchThread` runs a backend's change notifications in a
background thread.  The backends supply ``_load``, ``_swap`` and ``_listen``.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import (
    ConfigError,
    NotInitialized,
    RolledBack,
    SealingError,
    StoreCorrupt,
    StoreUnavailable,
)
from ..keyring import Keyring, next_generation
from .base import Mutator
from .sealing import MAX_VALUE_BYTES, AnySealer, check_format_1, is_format_1

log = logging.getLogger("stek.stores")

#: Attempts of an update's compare-and-set before giving up (each conflict
#: means another writer succeeded, so progress is being made fleet-wide).
MAX_ATTEMPTS = 64

T = TypeVar("T")


class WatchThread:
    """Runs a backend's ``listen(watch)`` in a daemon thread, reconnecting with backoff.

    ``listen`` blocks while connected: it calls ``watch.ready()`` once its
    subscription is in place and ``watch.changed()`` for every notification,
    polls ``watch.stop_event``, and returns or raises when the connection
    ends.  Losing the connection notifies (the consumer's re-read then fails
    and it knows it is serving a snapshot), and so does ``ready()``, so that
    a change missed while disconnected is re-read.
    """

    def __init__(self, name: str, url: str, listen: Callable[[WatchThread], None],
                 on_change: Callable[[], None]) -> None:
        self._url = url
        self._listen = listen
        self._cb = on_change
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.reconnects = 0
        self._closers: list[Callable[[], None]] = []
        self._closers_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def changed(self) -> None:
        try:
            self._cb()
        except Exception:  # a subscriber's failure must not kill the watch
            log.exception("change subscriber failed")

    def ready(self) -> None:
        self.connected.set()
        self.changed()

    def _run(self) -> None:
        backoff = 0.05
        failing = False
        while not self.stop_event.is_set():
            lost = False
            try:
                self._listen(self)  # a normal return: idle stream, reconnect quietly
                failing = False
                backoff = 0.05
            except Exception as exc:
                lost = True
                if not self.stop_event.is_set() and not failing:
                    log.warning("watch on %s lost (%s); reconnecting", self._url,
                                type(exc).__name__)
                failing = True
            with self._closers_lock:
                self._closers.clear()
            if self.stop_event.is_set():
                return
            if lost and self.connected.is_set():
                # Tell the consumer at once: its re-read fails, so it knows
                # (and logs) that it is serving from its last snapshot.
                self.connected.clear()
                self.changed()
            self.connected.clear()
            self.reconnects += 1
            # Jittered exponential backoff, capped at 1 s so that a store that
            # comes back is watched again (and re-read) within about a second.
            self.stop_event.wait(backoff * (0.5 + random.random()))
            backoff = min(1.0, backoff * 2)

    def on_close(self, fn: Callable[[], None]) -> None:
        """Register how to interrupt the current connection from close()."""
        with self._closers_lock:
            self._closers.append(fn)

    def close(self) -> None:
        self.stop_event.set()
        with self._closers_lock:
            closers = list(self._closers)
        for fn in closers:
            with contextlib.suppress(Exception):
                fn()
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)


@dataclass(frozen=True)
class Pass:
    """What one :meth:`SharedStore.update` did: its ring, the value it last loaded
    (None: the store was empty), and whether it wrote."""

    ring: Keyring
    loaded: bytes | None
    wrote: bool


class SharedStore(abc.ABC, Generic[T]):
    """One sealed value with optimistic concurrency: the shape of every fleet store.

    ``T`` is the backend's version token (what ``_swap`` compares against).
    """

    url: str

    def __init__(self, url: str, sealer: AnySealer) -> None:
        self.url = url
        self.sealer = sealer
        #: Round trips to the store, by kind: the benchmark reports them per rotation.
        self.ops: dict[str, int] = {"read": 0, "cas": 0, "conflict": 0}
        self._ops_lock = threading.Lock()
        #: The highest generation this store object has read or written, and
        #: how many older (rolled-back, replayed) values it has refused.
        self.seen_generation = -1
        self.rollbacks_refused = 0
        self._logged_rollback: tuple[int, int] | None = None
        #: The newest ring this object read or wrote: what a write re-seeds
        #: the store from when it finds it empty or rolled back.
        self.last_ring: Keyring | None = None
        #: Keys revoked in any ring seen (name -> when it would have expired):
        #: dropped from every ring read, whoever wrote it.
        self.revoked: dict[bytes, int] = {}
        #: How many times this object re-seeded the store, and the last time why.
        self.reseeds = 0
        self.last_reseed: str | None = None

    @property
    def ring_id(self) -> str:
        """What sealed values are bound to: where the ring lives (backends say it
        without the host name, which differs from host to host)."""
        return self.url

    def _count(self, kind: str) -> None:
        with self._ops_lock:
            self.ops[kind] += 1

    # -- backend ---------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> tuple[bytes | None, T]:
        """The raw value (None if absent) and its version token."""

    @abc.abstractmethod
    def _swap(self, token: T, data: bytes) -> bool:
        """Write ``data`` if the value still has version ``token``; False on conflict."""

    # -- KeyStore --------------------------------------------------------------------
    def _decode(self, blob: bytes, floor: int, now: float | None = None) -> Keyring:
        """Open ``blob``, loaded after this store had seen generation ``floor``."""
        return self._remember(self._open(blob, floor, now))

    def _open(self, blob: bytes, floor: int, now: float | None = None, *,
              in_update: bool = False) -> Keyring:
        """The ring in ``blob`` as written (rollbacks refused, revoked keys left in).

        ``in_update``: ``blob`` was loaded by :meth:`update`, which a backend's
        :meth:`_admit` may answer differently (Redis: writes a failover lost).
        """
        plain, generation = self.sealer.open(blob, self.url, self.ring_id)
        ring = Keyring.from_bytes(plain, self.url, now)
        if generation is not None and generation != ring.generation:
            raise SealingError(f"{self.url}: sealed generation {generation} does not match "
                               f"the ring's ({ring.generation})")
        self._admit(ring.generation, floor, blob if in_update else None)
        return ring

    def _remember(self, ring: Keyring) -> Keyring:
        """``ring`` without the keys revoked in any ring seen; kept as the last if newest."""
        now = time.time()
        with self._ops_lock:
            for name, t in ring.revoked:
                self.revoked[name] = max(t, self.revoked.get(name, t))
            self.revoked = {n: t for n, t in self.revoked.items() if t > now}
            ring = ring.without(self.revoked, now)
            if self.last_ring is None or ring.generation >= self.last_ring.generation:
                self.last_ring = ring
        return ring

    def _note(self, generation: int) -> None:
        with self._ops_lock:
            self.seen_generation = max(self.seen_generation, generation)

    def _reseeded(self) -> Keyring | None:
        """The last ring seen, numbered above every generation seen; None if none was seen."""
        with self._ops_lock:
            last = self.last_ring
            if last is None:
                return None
            top = max(self.seen_generation, last.generation)
        return last.at_generation(next_generation(top, time.time()))

    def _reseed_done(self, why: str, old: int, new: Keyring) -> None:
        """Say once, at WARNING, that this process wrote its snapshot back."""
        self.reseeds += 1
        self.last_reseed = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: the store "
                            f"{why}; re-seeded from generation {old} as generation "
                            f"{new.generation}")
        log.warning("%s: the store %s; re-seeded it from this process's last snapshot "
                    "(generation %d) as generation %d, same keys and policy", self.url, why,
                    old, new.generation)

    def _admit(self, generation: int, floor: int, loaded: bytes | None = None) -> None:
        """Refuse a generation older than one seen before the value was loaded.

        ``loaded`` is the value itself when :meth:`update` loaded it, else None.

        The refusal is an error, so whoever reads (the installation's
        refresher, the agent) keeps the newer snapshot it already holds.
        Only ``floor``, what was seen when the load was sent, counts: another
        thread may have seen a newer value while this load was in flight.
        """
        with self._ops_lock:
            seen = floor
            if generation >= floor:
                self.seen_generation = max(self.seen_generation, generation)
                return
            self.rollbacks_refused += 1
            first = self._logged_rollback != (seen, generation)
            self._logged_rollback = (seen, generation)
        if first:
            log.warning("%s: refusing keyring generation %d, older than generation %d "
                        "already seen (a replayed or rolled-back value)", self.url,
                        generation, seen)
        raise RolledBack(
            f"{self.url}: holds keyring generation {generation}, older than generation "
            f"{seen} already seen: refusing a rolled-back (replayed) ring"
        )

    def read_raw(self) -> bytes | None:
        """The value exactly as stored (sealed): for inspection and tests."""
        self._count("read")
        return self._load()[0]

    def read(self) -> Keyring:
        self._count("read")
        floor = self.seen_generation
        blob, _ = self._load()
        if blob is None:
            raise NotInitialized(f"{self.url}: no keyring yet (run 'stek init')")
        return self._decode(blob, floor, time.time())

    def update(self, mutate: Mutator) -> Keyring:
        return self._update(mutate).ring

    def _update(self, mutate: Mutator) -> Pass:
        """:meth:`update`, saying also what it last loaded and whether it wrote."""
        for attempt in range(MAX_ATTEMPTS):
            self._count("read")
            floor = self.seen_generation
            blob, token = self._load()
            # Unreadable content (wrong KEK, corrupt) raises here, before any
            # write.  A process that saw a ring never initialises an empty
            # store, nor gives in to an older ring: it writes its last
            # snapshot back, numbered above every generation seen, keys and
            # policy unchanged (docs/fleet.md, "When the store comes back empty").
            current, why, raw = None, "was empty", None
            if blob is not None:
                try:
                    raw = self._open(blob, floor, in_update=True)
                except RolledBack:
                    if self.last_ring is None:
                        raise
                    why = "held an older generation"
                else:
                    current = self._remember(raw)
            forced, old = False, -1
            if current is None:
                current = self._reseeded()
                forced = current is not None
                old = self.last_ring.generation if self.last_ring is not None else -1
            elif raw is not None and current.keys != raw.keys:
                # The stored ring still holds a key revoked in a ring seen (an
                # older snapshot written back): write it without, the
                # revocation remembered.  (A ring that only lacks a revocation
                # is not rewritten for that alone: clocks that disagree on
                # when it lapses would take turns putting it back.)
                current = current.at_generation(next_generation(current.generation, time.time()))
                forced, why = True, "held a revoked key"
            new = mutate(current)
            if new is None or new is current:
                if current is None:
                    raise NotInitialized(f"{self.url}: no keyring yet (run 'stek init')")
                if not forced:
                    return Pass(current, blob, wrote=False)
                new = current
            self._count("cas")
            if self._swap(token, self.sealer.seal(new.to_bytes(), self.ring_id, new.generation)):
                self._note(new.generation)
                self._remember(new)
                if forced and raw is None:
                    self._reseed_done(why, old, new)
                elif forced:
                    log.warning("%s: the store %s; wrote generation %d without it", self.url,
                                why, new.generation)
                return Pass(new, blob, wrote=True)
            # Another writer got there first: re-read and re-plan.  Jitter keeps
            # a crowd of racers from colliding in lock step.
            self._count("conflict")
            time.sleep(random.random() * min(0.05, 0.002 * (attempt + 1)))
        raise StoreUnavailable(f"{self.url}: gave up after {MAX_ATTEMPTS} conflicting writes")

    def reseal(self, new: AnySealer, *, format_1: bool = False,
               now: float | None = None) -> Keyring:
        """Re-seal the stored ring under ``new`` (KEK rotation), atomically; the ring written.

        The ring's bytes are carried over unchanged: no key is lost, and a
        concurrent rotation either lands before (and is re-sealed) or after
        (and is sealed under ``new`` by a writer that holds it).  A value in
        the older format 1 is refused unless ``format_1``, and then only if
        :func:`check_format_1` finds it current; it is written in the current
        format at a generation above its own and any seen.
        """
        for _ in range(MAX_ATTEMPTS):
            self._count("read")
            floor = self.seen_generation
            blob, token = self._load()
            if blob is None:
                raise NotInitialized(f"{self.url}: no keyring yet (run 'stek init')")
            if is_format_1(blob) and not format_1:
                raise SealingError(
                    f"{self.url}: sealed in format 1, which binds neither the store nor the "
                    f"generation, so an old value put back looks the same; refusing to "
                    f"re-seal it (--format-1 re-seals a format-1 ring that is current)")
            plain, _ = self.sealer.open(blob, self.url, self.ring_id, legacy=format_1)
            ring = Keyring.from_bytes(plain, self.url)
            if is_format_1(blob):
                check_format_1(ring, self.url, time.time() if now is None else now)
                when = time.time() if now is None else now
                ring = Keyring(ring.policy, ring.keys,
                               next_generation(max(ring.generation, floor), when))
                plain = ring.to_bytes()
            else:
                self._admit(ring.generation, floor)
            self._count("cas")
            if self._swap(token, new.seal(plain, self.ring_id, ring.generation)):
                self._note(ring.generation)
                self.sealer = new
                return ring
            self._count("conflict")
            time.sleep(random.random() * 0.01)
        raise StoreUnavailable(f"{self.url}: gave up after {MAX_ATTEMPTS} conflicting writes")

    @abc.abstractmethod
    def subscribe(self, on_change: Callable[[], None]) -> WatchThread: ...

    def close(self) -> None:
        """Release connections (backends override)."""


def too_large(url: str, size: int | None = None) -> StoreCorrupt:
    """The error for a stored value larger than :data:`MAX_VALUE_BYTES` (not read)."""
    what = f"{size} bytes" if size is not None else f"more than {MAX_VALUE_BYTES} bytes"
    return StoreCorrupt(f"{url}: holds a value of {what}, larger than any sealed ring "
                        f"({MAX_VALUE_BYTES} bytes at most): refusing to read it")


def unavailable(url: str, action: str, exc: BaseException, *secrets: str,
                detail: str | None = None) -> StoreUnavailable:
    """A StoreUnavailable naming the failure, with any secret scrubbed from the text."""
    text = f"{type(exc).__name__}: {detail if detail is not None else exc}"
    text = text if len(text) <= 300 else text[:300] + "..."
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return StoreUnavailable(f"{url}: cannot {action}: {text}")


def options_only(options: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown store option(s): {', '.join(unknown)}")
