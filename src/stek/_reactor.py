"""One background thread per process for stek's timers and file watches.

Every installation's refresher (stek._refresh) and every file store's change
watch (stek.stores.file) runs here, so a process pays for one thread however
many contexts it installs (an SNI server installs several).  The thread
starts on first use and ends when nothing is left to wait for.

It waits in ``poll(2)`` on the descriptors registered with
:meth:`Reactor.add_reader` (the file stores' inotify descriptor) and on an
``eventfd(2)`` that other threads write to wake it, with a timeout set by the
earliest timer.  Callbacks run one at a time in that thread; one that raises
is logged and the loop goes on.

fork(): the thread does not survive it, and the descriptors are the
parent's, so the child starts from scratch on its first call (each owner
registers again: see docs/design.md, "Threads, fork and finalizers").
"""

from __future__ import annotations

import collections
import contextlib
import gc
import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("stek.installation")

Callback = Callable[[], None]


class Timer:
    """A callback due at an instant of its reactor's clock; ``cancel()`` before it runs."""

    __slots__ = ("_reactor", "cancelled", "fn", "when")

    def __init__(self, reactor: Reactor, when: float, fn: Callback) -> None:
        self._reactor = reactor
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._reactor._wake()


class Reactor:
    """Timers, thread-safe wake-ups and readable descriptors, served by one daemon thread.

    ``clock`` tells the time the timers are due at (``time.monotonic`` in
    production); a test passes a clock it moves, then ``call_soon`` wakes the
    loop to look at it again.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        # Re-entrant: the garbage collector may run an installation's
        # finalizer (which cancels timers and removes readers) in any thread,
        # this one included, while the lock is held.
        self._lock = threading.RLock()
        self._selector: selectors.BaseSelector | None = None
        self._wake_fds: tuple[int, int] = (-1, -1)
        self._readers: dict[int, Callback] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._soon: list[Callback] = []
        #: From finalizers (call_from_finalizer): appended with no lock.
        self._finalized: collections.deque[Callback] = collections.deque()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def _check_fork(self) -> None:
        if self._pid == os.getpid():
            return
        # In a forked child: no thread, and descriptors shared with the
        # parent.  Close this process's copies; owners register again.
        selector, fds = self._selector, self._wake_fds
        self._reset()
        if selector is not None:
            with contextlib.suppress(Exception):
                selector.close()
        for fd in set(fds):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- public -------------------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        self._check_fork()
        return self._thread

    def call_later(self, delay: float, fn: Callback) -> Timer:
        """Run ``fn`` in the loop thread ``delay`` seconds from now (by ``self.clock``)."""
        return self.call_at(self.clock() + delay, fn)

    def call_at(self, when: float, fn: Callback) -> Timer:
        """Run ``fn`` in the loop thread at instant ``when`` of ``self.clock``."""
        self._check_fork()
        timer = Timer(self, when, fn)
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), timer))
            starting = self._ensure_running()
        _start(starting)
        self._wake()
        return timer

    def call_soon(self, fn: Callback) -> None:
        """Run ``fn`` in the loop thread as soon as it is free (any thread may call this)."""
        self._check_fork()
        with self._lock:
            self._soon.append(fn)
            starting = self._ensure_running()
        _start(starting)
        self._wake()

    def call_from_finalizer(self, fn: Callback) -> None:
        """Run ``fn`` in the loop thread soon; safe in a garbage-collector finalizer.

        A finalizer runs in whatever thread the collection started in: maybe
        an application's event loop, maybe in the middle of stek's own work
        there, holding one of its locks.  So this takes no lock and starts no
        thread: an append and a wake-up.  The loop thread runs while anything
        is installed; if it is not running, ``fn`` waits for its next start.
        """
        self._check_fork()
        self._finalized.append(fn)
        self._wake()

    def add_reader(self, fd: int, fn: Callback) -> None:
        """Call ``fn`` in the loop thread whenever ``fd`` is readable."""
        self._check_fork()
        with self._lock:
            starting = self._ensure_running()
            assert self._selector is not None
            self._readers[fd] = fn
            self._selector.register(fd, selectors.EVENT_READ)
        _start(starting)
        self._wake()

    def remove_reader(self, fd: int) -> None:
        self._check_fork()
        with self._lock:
            if self._readers.pop(fd, None) is not None and self._selector is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(fd)
        self._wake()

    # -- the thread ---------------------------------------------------------------------
    def _ensure_running(self) -> threading.Thread | None:
        """Open the wake descriptor and make the thread if needed; the lock is held.

        A new thread is returned for the caller to start once it has released
        the lock: ``Thread.start()`` waits for the thread to begin, and a
        garbage-collector finalizer that runs in the new thread's start-up
        (cancelling a timer, removing a reader) takes this lock.  Starting it
        under the lock deadlocked both threads.
        """
        if self._selector is None:
            # poll(2) needs no descriptor of its own, unlike epoll.
            self._selector = (selectors.PollSelector() if hasattr(selectors, "PollSelector")
                              else selectors.SelectSelector())
            if hasattr(os, "eventfd"):
                efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._wake_fds = (efd, efd)
            else:  # pragma: no cover - not Linux
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                self._wake_fds = (r, w)
            self._selector.register(self._wake_fds[0], selectors.EVENT_READ)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stek-background",
                                            daemon=True)
            return self._thread
        return None

    def _wake(self) -> None:
        fd = self._wake_fds[1]
        if fd < 0:
            return
        with contextlib.suppress(OSError):  # full (already awake) or closed by fork
            if self._wake_fds[0] == fd:
                os.eventfd_write(fd, 1)
            else:  # pragma: no cover - not Linux
                os.write(fd, b"\0")

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_fds[0], 8 if self._wake_fds[0] == self._wake_fds[1] else 4096)

    def _next(self) -> tuple[list[Callback], float | None] | None:
        """Callbacks to run now and how long to wait after them; None: nothing left, exit."""
        with self._lock:
            self._skip_cancelled()
            if not (self._timers or self._soon or self._readers or self._finalized):
                self._thread = None  # a later call starts a new thread
                return None
            run, self._soon = self._soon, []
            while self._finalized:
                run.append(self._finalized.popleft())
            now = self.clock()
            while self._timers and self._timers[0][0] <= now:
                timer = heapq.heappop(self._timers)[2]
                if not timer.cancelled:
                    timer.cancelled = True  # ran: cancel() is now a no-op
                    run.append(timer.fn)
            self._skip_cancelled()
            timeout = max(0.0, self._timers[0][0] - now) if self._timers else None
            return run, timeout

    def _skip_cancelled(self) -> None:
        # Cancelled timers leave the heap when they reach its top: no purge
        # that a re-entrant call (see below) could race with.
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        while True:
            step = self._next()
            if step is None:
                return
            run, timeout = step
            for fn in run:
                _call(fn)
            if run:
                continue  # callbacks may have added timers: recompute the wait
            for key, _ in selector.select(timeout):
                if key.fd == self._wake_fds[0]:
                    self._drain()
                    continue
                reader = self._readers.get(key.fd)
                if reader is not None:
                    _call(reader)


def _start(thread: threading.Thread | None) -> None:
    """Start the loop thread, with the garbage collector paused until it has begun.

    ``Thread.start()`` waits until the new thread has started.  A collection
    that runs in the new thread's start-up runs finalizers there.  An
    installation's own finalizer takes no lock (:meth:`call_from_finalizer`),
    but an application's that uninstalls takes stek._refresh's, which the
    starting thread may hold: each would wait for the other for ever (seen
    as install() hanging for 300 s, when installations closed themselves in
    their finalizer).  With no collection in that window, none can.
    """
    if thread is None:
        return
    with collection_paused():
        thread.start()


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection inside; on again after, if it was on before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:  # else the application turned it off: leave it so
            gc.enable()


def _call(fn: Callback) -> None:
    try:
        fn()
    except Exception:  # one owner's failure must not stop everyone's refreshes
        log.exception("stek background task failed")


#: The process's one loop.
REACTOR = Reactor()
