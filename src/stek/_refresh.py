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
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._reactor import REACTOR, Timer
from .errors import StekError
from .schedule import next_change
from .stores import KeyStore, open_store

if TYPE_CHECKING:
    from .installation import Installation

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


class _Group:
    """The installations of this process on one store object."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self.members: list[_Background] = []
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

    def live(self) -> list[Installation]:
        with _LOCK:
            # Walk a copy: a collection during the walk may run a finalizer
            # that uninstalls a member, which leaves ``members`` (close()).
            return [inst for bg in tuple(self.members) if (inst := bg.target()) is not None]

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
            members = [(bg, inst) for bg in tuple(self.members)
                       if (inst := bg.target()) is not None]
        if not members:
            return
        # A member that rotates, if any, does the read: it rotates first when due.
        bg0, leader = next(((b, i) for b, i in members if i.rotate), members[0])
        try:
            ring = leader.refresh()
        except BaseException as exc:
            for bg, _ in members:
                bg.record(ok=False)
            self.failed(exc, at_start=False)
            if not isinstance(exc, Exception):
                raise
        else:
            bg0.record(ok=True)
            for bg, inst in members:
                if inst is not leader:
                    inst._swap(ring)
                    bg.record(ok=True)
                inst._report()
            if self.failing:
                self.failing = False
                log.warning("store %s is back; snapshot refreshed (keyring generation %d)",
                            self.store.url, ring.generation)
            self.open()
        self.schedule([inst for _, inst in members])

    def schedule(self, insts: list[Installation]) -> None:
        delay = RETRY_INTERVAL if self.failing else BACKSTOP_INTERVAL
        for inst in insts:
            if inst.rotate and not self.failing:
                ring, now = inst.ring, inst._clock()
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


class _Background:
    """One installation's place in its store's group, and what the last read did."""

    def __init__(self, slot: _Slot | None) -> None:
        self.slot = slot
        self.stop = threading.Event()
        self.group: _Group | None = None
        self.target: Callable[[], Installation | None] = _nothing
        #: time.time() of the last successful store read, None before the first.
        self.last_refresh: float | None = None
        #: False while the store does not answer (or before the first read).
        self.store_ok = False

    @property
    def thread(self) -> threading.Thread | None:
        """The process's background thread (shared by every installation)."""
        return REACTOR.thread

    def record(self, *, ok: bool) -> None:
        self.store_ok = ok
        if ok:
            self.last_refresh = time.time()

    def start(self, inst: Installation) -> None:
        self.target = weakref.ref(inst)
        with _LOCK:
            group = _GROUPS.get(id(inst.store))
            if group is None:
                group = _GROUPS[id(inst.store)] = _Group(inst.store)
            group.members.append(self)
            self.group = group
        group.schedule(group.live())

    def started(self, inst: Installation, error: BaseException | None) -> None:
        """install()'s first read: its outcome, unless the group already read since."""
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

    def restart(self, inst: Installation) -> None:
        """In a forked child: join a fresh group (the parent's watches are not ours)."""
        if self.stop.is_set():
            return
        self.group = None
        self.start(inst)
        if self.store_ok and self.group is not None:
            self.group.open()
        elif self.group is not None:
            self.group.failing = True  # logged in the parent already
            self.group.schedule(self.group.live())

    def collected(self) -> None:
        """The finalizer of a collected installation: free its slot; the rest, later.

        It runs in whatever thread the collection started in (an event loop,
        a thread inside stek holding this module's lock, a file watch's or a
        Redis connection's), so it waits for nothing and takes none of them.
        Closing the store watch, which can talk to the store and wait for its
        thread, is done by the loop thread.
        """
        if self.slot is not None:
            self.slot.release()
        REACTOR.call_from_finalizer(self.close)

    def close(self) -> None:
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
        if self.slot is not None:
            self.slot.release()


def _nothing() -> Installation | None:
    return None


#: Installations alive in this process, for the fork handler.
_LIVE: weakref.WeakSet[Installation] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    from .installation import _ACCEL

    global _LOCK, _STORES_LOCK
    # The parent's groups hold its watches (threads that did not survive,
    # descriptors it still reads): forget them without closing anything.
    _LOCK = threading.RLock()
    _STORES_LOCK = threading.Lock()
    _GROUPS.clear()
    if _ACCEL is not None:
        _ACCEL.after_fork()
    for inst in list(_LIVE):
        inst._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Slot:
    """An accelerator slot, released exactly once (by uninstall() or by GC)."""

    def __init__(self, accel: Any, index: int) -> None:
        self.accel = accel
        self.index: int | None = index
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self.index is not None:
                self.accel.release(self.index)
                self.index = None
