"""A lock for state that a finalizer may change from inside a call on it.

A garbage collection runs finalizers in whatever thread allocates, between
any two steps of the code running there.  An application's finalizer that
calls ``uninstall()`` closes a store watch; if that thread was itself inside
the watch's code (walking its subscriptions, between a command and its reply
on a Redis connection), a plain re-entrant lock lets the nested close change
the state under the call it interrupted.

:class:`Serial` holds a re-entrant lock.  ``with serial.held():`` marks the
thread as inside.  :meth:`Serial.run` makes a change at once, or, from inside
the same thread's ``held()`` block, when its outermost block ends, in the
order the changes were asked for.  Only changes that return nothing (closing,
unsubscribing) can wait like that, so only they go through ``run``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class Serial:
    """One thread at a time, and within it, one call at a time."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._inside = False  # True only while the lock's holder is in held()
        self._later: list[Callable[[], None]] = []

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The lock, for a call; when the outermost one ends, what ``run`` left for it."""
        with self._lock:
            if self._inside:  # nested in this thread's own call: it runs the queue
                yield
                return
            self._inside = True
            try:
                yield
            finally:
                try:
                    while self._later:
                        self._later.pop(0)()
                finally:
                    self._inside = False

    def run(self, change: Callable[[], None]) -> None:
        """``change()`` under the lock; from inside a call of this thread, after it."""
        with self._lock:
            if self._inside:  # only the lock's holder can see it True: this thread
                self._later.append(change)
                return
            with self.held():
                change()
