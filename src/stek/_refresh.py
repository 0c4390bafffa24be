"""The background side of installations: one refresher per store, one thread per process.

The installations of a process that read the same store object form a
group: one subscription to the store's changes, one read per change, the
ring swapped into every member.  ``install()`` given the same URL twice
shares one store object (:func:`shared_store`), so an SNI server with ten
contexts on one Redis opens one connection (its reads and its change
notifications), not ten.  Every group's timers run on the process's one
background thread (stek._reactor), which also reads the file stores' inotify
events.

A group re-reads the store when it announces a change, every
``BACKSTOP_INTERVAL`` seconds as a backstop, every ``RETRY_INTERVAL``
seconds while the store does not answer, and (with ``rotate=True``) when a
rotation is due.  It holds its installations weakly: a context that is
collected leaves its group, and the last one to leave closes the watch.

Availability: a store that cannot be read never takes TLS down.  Its first
failure is logged once per group (that is, once per process and store),
the last snapshot keeps serving (an installation that never read a ring
serves full handshakes and issues no ticket), and the first successful read
is logged once and swapped in, with no restart.

A group knows its members only as :class:`Member` (what it reads and calls
on each), reached through a weak reference; each member's side of the group
is a :class:`Membership`.  stek.installation is the owner: an Installation
takes part through a small adapter, and in a forked child its own fork hook
makes each one rejoin, after this module's has forgotten the parent's
groups (:func:`_after_fork_in_child`; docs/design.md, "Threads, fork and
finalizers").
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ._reactor import REACTOR, Timer
from .errors import StekError
from .keyring import Keyring
from .schedule import next_change
from .stores import KeyStore, open_store

log = logging.getLogger("stek.installation")

#: Seconds between backstop re-reads of the store (notifications come sooner).
BACKSTOP_INTERVAL = 5.0
#: Seconds between attempts while the store does not answer.
RETRY_INTERVAL = 1.0

#: Environment variables that change what ``open_store(url)`` builds (the KEK).
_STORE_ENV = ("STEK_KEK", "STEK_KEK_FILE", "STEK_INSECURE_PLAINTEXT")
_STORES: weakref.WeakValueDictionary[tuple[str, ...], Any] = weakref.WeakValueDictionary()
_STORES_LOCK = threading.Lock()


def shared_store(store: KeyStore | str | None) -> KeyStore:
    """``open_store(store)``, reusing the store object this process already opened for a URL."""
    if store is not None and not isinstance(store, str):
        return store
    from .stores import default_url

    url = store if store is not None else default_url()
    key = (url, *(os.environ.get(v, "") for v in _STORE_ENV))
    with _STORES_LOCK:
        found = _STORES.get(key)
        if found is None:
            found = open_store(url)
            _STORES[key] = found
        return found


class Member(Protocol):
    """What a group needs from each of its members (an installation), all from the loop thread."""

    @property
    def rotate(self) -> bool:
        """True when this member rotates the ring when a change is due (it then does the read)."""

    @property
    def ring(self) -> Keyring:
        """The ring the member serves now (its schedule says when the next change is due)."""

    def clock(self) -> float:
        """The instant the member's key schedule is at."""

    def refresh(self) -> Keyring:
        """Read the store (rotating first when ``rotate`` and due), swap the ring in, return it."""

    def swap(self, ring: Keyring) -> None:
        """Serve ``ring``, which another member of the group read."""

    def report(self) -> None:
        """After each successful read: log what the member has to say (once per fact)."""


class _Group:
    """The members of this process on one store object."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.members: list[Membership] = []
        self.sub: Any = None
        self.timer: Timer | None = None
        self.pending = False  # a notification is queued on the loop
        self.failing = False
        self.closed = False

    def open(self) -> None:
        """Subscribe to the store's changes, once it has answered.

        Not before: a watch on a store that is down only adds its own
        reconnect loop and log lines to the retries below.
        """
        with _LOCK:
            if self.sub is not None or self.closed:
                return
            self.sub = _OPENING
        sub = self.store.subscribe(self.notify)
        with _LOCK:
            if self.closed:
                sub.close()
            else:
                self.sub = sub

    @property
    def watching(self) -> bool:
        """True once the store's change subscription is in place.

        A file store's watch is in place when ``subscribe()`` returns (an
        inotify watch or the stat loop's baseline, stores/_filewatch.py); a
        fleet store's once its listener has subscribed
        (``WatchThread.connected``, stores/shared.py).  Until then a change
        reaches this group only by a backstop or retry read.  Read-only: it
        lets a test wait for the watch instead of sleeping.
        """
        sub = self.sub
        if sub is None or sub is _OPENING:
            return False
        connected = getattr(sub, "connected", None)
        return connected is None or bool(connected.is_set())

    def notify(self) -> None:
        """From the store's watch (any thread): re-read soon, once however many arrive."""
        with _LOCK:
            if self.pending or self.closed:
                return
            self.pending = True
        REACTOR.call_soon(self.run)

    def close(self) -> None:
        with _LOCK:
            self.closed = True
            sub, self.sub = self.sub, None
        if self.timer is not None:
            self.timer.cancel()
        if sub is not None and sub is not _OPENING:
            sub.close()

    def live(self) -> list[Member]:
        with _LOCK:
            # Walk a copy: a collection during the walk may run a finalizer
            # that uninstalls a member, which leaves ``members`` (leave()).
            return [m for ms in tuple(self.members) if (m := ms.target()) is not None]

    def failed(self, exc: BaseException, at_start: bool) -> None:
        if self.failing:
            return
        self.failing = True
        if at_start:
            log.warning("store %s unreadable at start (%s): serving full handshakes without "
                        "tickets until it answers", self.store.url, exc)
        elif isinstance(exc, StekError):
            log.warning("store %s unreadable, serving the last snapshot: %s", self.store.url, exc)
        else:
            log.error("unexpected error refreshing from %s, serving the last snapshot",
                      self.store.url, exc_info=exc)

    def run(self) -> None:
        """In the loop thread: read (or rotate) once, swap into every member, reschedule."""
        with _LOCK:
            self.pending = False
            if self.closed:
                return
            members = [(ms, m) for ms in tuple(self.members) if (m := ms.target()) is not None]
        if not members:
            return
        # A member that rotates, if any, does the read: it rotates first when due.
        ms0, leader = next(((ms, m) for ms, m in members if m.rotate), members[0])
        try:
            ring = leader.refresh()
        except BaseException as exc:
            for ms, _ in members:
                ms.record(ok=False)
            self.failed(exc, at_start=False)
            if not isinstance(exc, Exception):
                raise
        else:
            ms0.record(ok=True)
            for ms, m in members:
                if m is not leader:
                    m.swap(ring)
                    ms.record(ok=True)
                m.report()
            if self.failing:
                self.failing = False
                log.warning("store %s is back; snapshot refreshed (keyring generation %d)",
                            self.store.url, ring.generation)
            self.open()
        self.schedule([m for _, m in members])

    def schedule(self, members: list[Member]) -> None:
        delay = RETRY_INTERVAL if self.failing else BACKSTOP_INTERVAL
        for m in members:
            if m.rotate and not self.failing:
                ring, now = m.ring, m.clock()
                delay = min(delay, max(0.05, next_change(ring.keys, ring.policy, now) - now + 0.01))
        with _LOCK:
            if self.closed:
                return
            if self.timer is not None:
                self.timer.cancel()
            self.timer = REACTOR.call_later(delay, self.run)


#: Marks a subscription being opened (outside the lock: it may connect).
_OPENING: Any = object()

#: Groups of this process, by store object identity (the group holds the store).
_GROUPS: dict[int, _Group] = {}
_LOCK = threading.RLock()


class Membership:
    """One member's place in its store's group, and what the last read did.

    The owner calls :meth:`join` once, :meth:`started` with its first read's
    outcome, :meth:`rejoin` in a forked child, :meth:`leave` when it stops
    (``uninstall()``) and :meth:`collected` from its finalizer.
    """

    def __init__(self) -> None:
        #: Set once the member has left: it never rejoins.
        self.stop = threading.Event()
        self.group: _Group | None = None
        self.store: KeyStore | None = None
        self.target: Callable[[], Member | None] = _nothing
        #: time.time() of the last successful store read, None before the first.
        self.last_refresh: float | None = None
        #: False while the store does not answer (or before the first read).
        self.store_ok = False

    @property
    def thread(self) -> threading.Thread | None:
        """The process's background thread (shared by every group)."""
        return REACTOR.thread

    def record(self, *, ok: bool) -> None:
        self.store_ok = ok
        if ok:
            self.last_refresh = time.time()

    def join(self, store: KeyStore, member: Callable[[], Member | None]) -> None:
        """Join the group of ``store`` (this process's one for that store object).

        ``member`` reaches the member without keeping it alive (a weak
        reference, or a function over one): once it answers None, the member
        is skipped, and its owner's finalizer calls :meth:`collected`.
        """
        self.store, self.target = store, member
        with _LOCK:
            group = _GROUPS.get(id(store))
            if group is None:
                group = _GROUPS[id(store)] = _Group(store)
            group.members.append(self)
            self.group = group
        group.schedule(group.live())

    def started(self, error: BaseException | None) -> None:
        """The owner's first read: its outcome, unless the group already read since."""
        group = self.group
        if group is None:
            return
        if error is None:
            if self.last_refresh is None:
                self.record(ok=True)
            group.open()
            return
        if self.last_refresh is None:
            self.record(ok=False)
        group.failed(error, at_start=True)
        group.schedule(group.live())  # retry at RETRY_INTERVAL, not at the backstop

    def rejoin(self) -> None:
        """In a forked child: join a fresh group (the parent's watches are not ours).

        Called from the owner's own fork hook, which runs after this module's
        (:func:`_after_fork_in_child` forgets the parent's groups first).
        """
        if self.stop.is_set() or self.store is None:
            return
        self.group = None
        self.join(self.store, self.target)
        if self.store_ok and self.group is not None:
            self.group.open()
        elif self.group is not None:
            self.group.failing = True  # logged in the parent already
            self.group.schedule(self.group.live())

    def collected(self) -> None:
        """From the finalizer of a collected member: leave, later, from the loop thread.

        It runs in whatever thread the collection started in (an event loop,
        a thread inside stek holding this module's lock, a file watch's or a
        Redis connection's), so it waits for nothing and takes none of them.
        Closing the store watch, which can talk to the store and wait for its
        thread, is done by the loop thread.
        """
        REACTOR.call_from_finalizer(self.leave)

    def leave(self) -> None:
        """Leave the group for good; the last member out closes its watch and timer."""
        self.stop.set()
        with _LOCK:
            group, self.group = self.group, None
            if group is not None and self in group.members:
                group.members.remove(self)
                if group.members:
                    group = None
                elif _GROUPS.get(id(group.store)) is group:
                    del _GROUPS[id(group.store)]
            else:
                group = None
        if group is not None:
            group.close()


def _nothing() -> Member | None:
    return None


def _after_fork_in_child() -> None:
    """Forget the parent's groups: they hold its watches (threads that did not
    survive, descriptors it still reads), so nothing is closed, only dropped.

    Registered when this module is first imported, so before the hook of any
    owner that imports it: ``after_in_child`` hooks run in registration order
    (os.register_at_fork), and an owner's hook, which calls
    :meth:`Membership.rejoin`, finds fresh locks and no group.
    """
    global _LOCK, _STORES_LOCK
    _LOCK = threading.RLock()
    _STORES_LOCK = threading.Lock()
    _GROUPS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
