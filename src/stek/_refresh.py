"""The background side of an installation: store watch, refresher thread, fork.

The refresher re-reads the store when it announces a change (and every
``BACKSTOP_INTERVAL`` seconds as a backstop), rotates when ``rotate=True``
and a change is due, and swaps the installation's snapshot.  It never keeps
the installation (and so its context) alive while it waits.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import StekError
from .schedule import next_change

if TYPE_CHECKING:
    from .installation import Installation

log = logging.getLogger("stek.installation")

#: Seconds between backstop re-reads of the store (notifications come sooner).
BACKSTOP_INTERVAL = 5.0


class _Background:
    """One installation's store watch and refresher thread (restartable after fork)."""

    def __init__(self, slot: _Slot | None) -> None:
        self.slot = slot
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.sub: Any = None
        self.thread: threading.Thread | None = None

    def start(self, inst: Installation) -> None:
        self.sub = inst.store.subscribe(_weak_method(inst, "_notify"))
        self.thread = threading.Thread(
            target=_refresh_loop, args=(weakref.ref(inst), self.wake, self.stop),
            name="stek-refresh", daemon=True,
        )
        self.thread.start()

    def restart(self, inst: Installation) -> None:
        if self.stop.is_set():
            return
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.start(inst)

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        if self.sub is not None:
            self.sub.close()
        if self.slot is not None:
            self.slot.release()


#: Installations alive in this process, for the fork handler.
_LIVE: weakref.WeakSet[Installation] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    from .installation import _ACCEL

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


def _weak_method(obj: Installation, name: str) -> Callable[[], None]:
    ref = weakref.ref(obj)

    def call() -> None:
        target = ref()
        if target is not None:
            getattr(target, name)()

    return call


def _refresh_loop(ref: weakref.ref[Installation], wake: threading.Event,
                  stop: threading.Event) -> None:
    failing = False
    while not stop.is_set():
        inst = ref()
        if inst is None:
            return
        ring = inst._snap.ring
        now = inst._clock()
        wait = BACKSTOP_INTERVAL
        if inst.rotate:
            due = next_change(ring.keys, ring.policy, now)
            wait = max(0.05, min(wait, due - now + 0.01))
        del inst  # do not keep the installation (and its context) alive while waiting
        wake.wait(wait)
        wake.clear()
        if stop.is_set():
            return
        inst = ref()
        if inst is None:
            return
        try:
            inst.refresh()
            if failing:
                log.warning("store %s is back; snapshot refreshed", inst.store.url)
            failing = False
        except StekError as exc:
            if not failing:
                log.warning("store %s unreadable, serving the last snapshot: %s",
                            inst.store.url, exc)
            failing = True
        except Exception:
            log.exception("unexpected error refreshing from %s", inst.store.url)
            failing = True
        del inst
