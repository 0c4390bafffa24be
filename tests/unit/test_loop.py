"""stek._reactor.Reactor: the one background thread of a process."""

from __future__ import annotations

import threading

import pytest

from stek._reactor import Reactor


def test_thread_is_started_outside_the_reactor_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread.start() waits for the new thread to begin; a garbage-collector
    finalizer running in that thread's start-up (cancelling a timer, removing a
    reader) takes the reactor's lock.  Started under the lock, both threads
    waited for each other for ever (seen as a 300 s hang in install() on 3.10)."""
    reactor = Reactor()
    real_start = threading.Thread.start
    got_lock: list[bool] = []

    def start(self: threading.Thread) -> None:
        # What a finalizer in the new thread does: take the lock, from another thread.
        probe = threading.Thread(
            target=lambda: got_lock.append(reactor._lock.acquire(timeout=2) and
                                           (reactor._lock.release() or True)))
        real_start(probe)
        probe.join()
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    ran = threading.Event()
    reactor.call_soon(ran.set)
    reactor.call_at(0.0, lambda: None)
    assert ran.wait(5)
    # Each start of the reactor thread (it exits when idle) found the lock free.
    assert got_lock and all(got_lock), got_lock


def test_thread_starts_with_no_garbage_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread.start() waits for the new thread to begin.  A collection in that
    thread's start-up runs finalizers there, and an installation's or a file
    watch's finalizer takes its owner's lock (stek._refresh, the file watch),
    which install() holds while it schedules its first timer: both threads
    waited for each other for ever (a 300 s hang in install() on 3.12, in CI).
    So no collection may run while the loop thread starts, and the collector
    is on again afterwards (and stays off if the application turned it off)."""
    import gc

    real_start = threading.Thread.start
    seen: list[bool] = []

    def start(self: threading.Thread) -> None:
        seen.append(gc.isenabled())
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    assert gc.isenabled()
    ran = threading.Event()
    Reactor().call_at(0.0, ran.set)
    assert ran.wait(5)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        Reactor().call_soon(ran.clear)
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert seen == [False, False]


def test_timers_follow_the_injected_clock() -> None:
    """A timer is due by the reactor's clock, not the wall's: an hour passes when the
    test says so, and the next pass of the loop runs what fell due."""
    now = [1000.0]
    reactor = Reactor(clock=lambda: now[0])
    fired = threading.Event()
    reactor.call_later(3600, fired.set)
    passed = threading.Event()
    reactor.call_soon(passed.set)  # one pass of the loop at the old time
    assert passed.wait(5)
    assert not fired.is_set()
    now[0] += 3600
    reactor.call_soon(lambda: None)  # wake the loop: it reads the clock again
    assert fired.wait(5)
