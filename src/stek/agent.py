"""``stek agent``: the long-running rotator.

It rotates the ring on schedule (sleeping until :func:`~stek.schedule.next_change`),
logs each change without key bytes, retries with backoff while the store is
unreachable, and stops cleanly on SIGTERM/SIGINT.  Targets (exporters,
reload commands, metrics) hang off :meth:`Agent.on_ring`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from .errors import StekError
from .keyring import Keyring
from .rotation import rotate
from .schedule import Policy, next_change
from .stores import KeyStore

log = logging.getLogger("stek.agent")

#: Even with nothing due, re-read at least this often (seconds): another
#: writer may have changed the ring, and targets may need a retry.
MAX_SLEEP = 30.0
#: Backoff bounds while the store is unreachable (seconds).
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0

RingHook = Callable[[Keyring], None]


class Agent:
    def __init__(self, store: KeyStore, *, policy: Policy | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.clock = clock
        self.stop_event = threading.Event()
        self.hooks: list[RingHook] = []
        self.ring: Keyring | None = None
        self.rotations = 0
        self.store_failures = 0

    def on_ring(self, hook: RingHook) -> None:
        """Call ``hook(ring)`` after every pass (changed or not); hooks must be idempotent."""
        self.hooks.append(hook)

    def step(self) -> float:
        """One pass: rotate if due, run hooks; returns seconds until the next pass."""
        now = self.clock()
        result = rotate(self.store, now=now, create=self.policy)
        if result.created:
            log.info("initialized keyring in %s", self.store.url)
        if result.changed:
            self.rotations += 1
            log.info("keyring generation %d: +%d key(s), -%d key(s)", result.ring.generation,
                     len(result.added), len(result.dropped))
        self.ring = result.ring
        for hook in self.hooks:
            try:
                hook(result.ring)
            except Exception:
                log.exception("agent hook failed")
        due = next_change(result.ring.keys, result.ring.policy, int(now))
        return max(0.05, min(MAX_SLEEP, due - now + 0.01))

    def run(self) -> None:
        backoff = BACKOFF_MIN
        log.info("stek agent started on %s", self.store.url)
        while not self.stop_event.is_set():
            try:
                wait = self.step()
                backoff = BACKOFF_MIN
            except StekError as exc:
                self.store_failures += 1
                log.warning("store %s: %s; retrying in %.1fs", self.store.url, exc, backoff)
                wait, backoff = backoff, min(BACKOFF_MAX, backoff * 2)
            self.stop_event.wait(wait)
        log.info("stek agent stopped")

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
