"""stek._loop.Reactor: the one background thread of a process."""

from __future__ import annotations

import threading

import pytest

from stek._loop import Reactor


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
