"""The agent's run loop: one pass after another, store errors told apart
(transient, retried with backoff; permanent, said once), the signal thread
that stops it, and its health (see :mod:`stek.agent`)."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

from ..errors import ConfigError, SealingError, StekError, StoreCorrupt
from ..keyring import Keyring
from ..rotation import rotate
from ..schedule import Policy, next_change
from ..stores import KeyStore, Subscription
from .targets import Target, publish_ahead_warnings

log = logging.getLogger("stek.agent")

# The defaults of each Agent's timers (seconds; see Agent's keyword arguments).
#: Even with nothing due, re-read at least this often (``interval``): another
#: writer may have changed the ring, and targets may need a retry.
MAX_SLEEP = 30.0
#: Longest time between two reads of a fleet store (``reseed_check``; stek's
#: installations re-read as often: stek._refresh.BACKSTOP_INTERVAL).
RESEED_CHECK = 5.0
#: Backoff bounds while the store is unreachable (``backoff``); a permanent
#: store error is re-read every BACKOFF_MAX.
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
#: The signals that stop the agent (systemd's stop, Ctrl-C).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def _deferred(signum: int, frame: object) -> None:
    """The Python-level handler of STOP_SIGNALS: none; see Agent.install_signal_handlers."""


RingHook = Callable[[Keyring], None]
Clock = Callable[[], float]


class Agent:
    """The rotator: :meth:`run` makes pass after pass until :meth:`stop`.

    Its timers, in seconds: ``interval``, the longest sleep between two
    passes; ``reseed_check``, the longest between two reads of a fleet store
    (one that can be emptied behind the agent's back); ``backoff``, the
    ``(min, max)`` of the wait after a store error, doubling from min up to
    max (a permanent error waits max).  Targets have their own
    (:class:`~stek.agent.targets.Target`'s ``retry_min`` and ``retry_max``).
    """

    def __init__(self, store: KeyStore, *, policy: Policy | None = None,
                 clock: Clock = time.time, targets: Sequence[Target] = (),
                 interval: float = MAX_SLEEP, reseed_check: float = RESEED_CHECK,
                 backoff: tuple[float, float] = (BACKOFF_MIN, BACKOFF_MAX)) -> None:
        if not interval > 0:
            raise ConfigError("the agent's interval must be positive")
        if not reseed_check > 0:
            raise ConfigError("the agent's reseed_check must be positive")
        backoff_min, backoff_max = backoff
        if not 0 < backoff_min <= backoff_max:
            raise ConfigError(f"the agent's backoff must satisfy 0 < min <= max "
                              f"(got {backoff_min:g}, {backoff_max:g})")
        self.store = store
        self.policy = policy or Policy()
        self.clock = clock
        self.targets = list(targets)
        self.interval = interval
        self.reseed_check = reseed_check
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        # The wait after the next store error: backoff_min after a good pass,
        # doubled by each failed one up to backoff_max (see run_pass).
        self._next_backoff = backoff_min
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self.hooks: list[RingHook] = []
        #: More /healthz problems (for example the mirror's): check(now) -> sentences.
        self.health_checks: list[Callable[[float], list[str]]] = []
        self.ring: Keyring | None = None
        self.rotations = 0
        self.store_failures = 0
        self.passes = 0
        self.last_pass_ok: float | None = None
        self.store_error: str | None = None
        self.store_error_permanent = False
        #: Names of revoked keys seen in the ring, and how many were new since start.
        self.revoked_seen: set[bytes] = set()
        self.revocations = 0
        self.started_at = clock()
        self._warned: set[str] = set()
        self._lock = threading.Lock()  # one pass at a time (run loop vs. tests)
        for target in self.targets:
            target.cancel = self.stop_event  # a reload still running at SIGTERM is killed

    def on_ring(self, hook: RingHook) -> None:
        """Call ``hook(ring)`` after every pass (changed or not); hooks must be idempotent."""
        self.hooks.append(hook)

    def step(self) -> float:
        """One pass: rotate if due, export and reload; returns seconds until the next pass."""
        with self._lock:
            return self._step()

    def _step(self) -> float:
        now = self.clock()
        result = rotate(self.store, now=now, create=self.policy)
        self.passes += 1
        if self.store_error is not None:
            log.info("store %s: read again after the error", self.store.url)
        self.store_error = None
        self.store_error_permanent = False
        if result.created:
            log.info("initialized keyring in %s", self.store.url)
        if result.changed:
            self.rotations += 1
            log.info("keyring generation %d: +%d key(s), -%d key(s)", result.ring.generation,
                     len(result.added), len(result.dropped))
        ring = result.ring
        self._note_revoked(ring)
        self.ring = ring
        self._sync_targets(ring, now)
        for hook in self.hooks:
            try:
                hook(ring)
            except Exception:
                log.exception("agent hook failed")
        self._warn(ring.policy)
        self.last_pass_ok = now
        due = min(next_change(ring.keys, ring.policy, int(now)), next_boundary(ring, now))
        for target in self.targets:
            if target.retry_at is not None:
                due = min(due, target.retry_at)
        if hasattr(self.store, "last_ring"):
            # A fleet store emptied without a change notification (a Redis DEL)
            # is found, and re-seeded, within reseed_check seconds.
            due = min(due, now + self.reseed_check)
        return max(0.05, min(self.interval, due - now + 0.01))

    def _note_revoked(self, ring: Keyring) -> None:
        """Log (once) and count the keys a new ring says were revoked."""
        names = {name for name, _ in ring.revoked}
        fresh = sorted(names - self.revoked_seen)
        if fresh and self.ring is not None:
            self.revocations += len(fresh)
            log.warning("keyring generation %d revokes %d key(s): %s; the targets follow",
                        ring.generation, len(fresh), ", ".join(n.hex() for n in fresh))
        self.revoked_seen |= names

    def notes(self) -> list[str]:
        """Events worth a line in /healthz though not a problem (a re-seed of the store)."""
        last = getattr(self.store, "last_reseed", None)
        return [f"store {self.store.url}: {last}"] if isinstance(last, str) else []

    def _sync_targets(self, ring: Keyring, now: float) -> None:
        for target in self.targets:
            if self.stop_event.is_set():
                return
            try:
                target.sync(ring, now)
            except Exception:  # a bug in one target must not stop the others
                target.export_failures += 1
                target.export_error = "internal error (see log)"
                log.exception("target %s failed", target.name)

    def store_failed(self, exc: StekError, retry_in: float) -> float:
        """Record a failed pass; keep the targets on the last ring; seconds until the next.

        A transient error is logged at every retry; a permanent one (see
        :func:`is_permanent`) once, as an ERROR, then re-read every ``backoff_max``.
        """
        self.store_failures += 1
        message = about_store(self.store, exc)
        if is_permanent(exc):
            retry_in = self.backoff_max
            if not self.store_error_permanent or message != self.store_error:
                log.error("store %s: %s: this is permanent (it will not fix itself); fix the "
                          "store, its permissions or the key-encryption key. Until then the "
                          "targets keep the last keys read, /healthz fails, and the store is "
                          "re-read every %gs", self.store.url, message, retry_in)
        else:
            log.warning("store %s: %s; retrying in %.1fs", self.store.url, message, retry_in)
        self.store_error = message
        self.store_error_permanent = is_permanent(exc)
        if self.ring is not None:
            now = self.clock()
            with self._lock:
                self._sync_targets(self.ring, now)
            # Back sooner if a key of the last ring activates or retires meanwhile.
            retry_in = min(retry_in, max(0.05, next_boundary(self.ring, now) - now + 0.01))
        return retry_in

    def _warn(self, policy: Policy) -> None:
        for note in publish_ahead_warnings(policy, self.interval, self.targets):
            if note not in self._warned:
                self._warned.add(note)
                log.warning("%s", note)

    def run_pass(self) -> float:
        """One pass of :meth:`run`: :meth:`step`, or after a store error
        :meth:`store_failed` with the current backoff (doubled for the next
        error, back to ``backoff_min`` after a good pass); seconds to wait."""
        try:
            wait = self.step()
        except StekError as exc:
            wait = self.store_failed(exc, self._next_backoff)
            self._next_backoff = min(self.backoff_max, self._next_backoff * 2)
            return wait
        self._next_backoff = self.backoff_min
        return wait

    def run(self) -> None:
        log.info("stek agent started on %s", self.store.url)
        sub: Subscription | None = None
        try:
            sub = self.store.subscribe(self.wake_event.set)
        except StekError as exc:
            log.warning("store %s: no change notification (%s); polling every %gs",
                        self.store.url, about_store(self.store, exc), self.interval)
        try:
            while not self.stop_event.is_set():
                wait = self.run_pass()
                self.wake_event.wait(wait)
                self.wake_event.clear()
        finally:
            if sub is not None:
                sub.close()
        log.info("stek agent stopped")

    def stop(self, signum: int | None = None) -> None:
        """Stop the run loop (and a reload still running); any thread may call it."""
        if signum is not None:
            log.info("received %s, stopping", signal.Signals(signum).name)
        self.stop_event.set()
        self.wake_event.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the agent; call it from the main thread.

        The stop is not made in a signal handler.  A Python handler runs in
        the main thread between two bytecodes, possibly while that thread is
        inside ``stop_event.wait()`` holding the event's lock, which is not
        reentrant, so ``Event.set()`` there would wait forever.  The handlers
        do nothing; the signal number reaches a pipe (``signal.set_wakeup_fd``)
        read by a thread of its own, which calls :meth:`stop`.
        """
        read_fd, write_fd = os.pipe()  # not inherited by reload commands (PEP 446)
        os.set_blocking(write_fd, False)  # set_wakeup_fd requires it
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, _deferred)
        threading.Thread(target=self._stop_on_signal, args=(read_fd,), name="stek-signals",
                         daemon=True).start()

    def _stop_on_signal(self, read_fd: int) -> None:
        while True:
            data = os.read(read_fd, 64)  # retried on EINTR by Python itself (PEP 475)
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    self.stop(signum)

    # -- health ---------------------------------------------------------------------
    def health(self, now: float | None = None) -> list[str]:
        """Problems right now ([] when healthy): what /healthz reports."""
        t = self.clock() if now is None else now
        problems = []
        if self.store_error is not None:
            kind = " (permanent)" if self.store_error_permanent else ""
            problems.append(f"store {self.store.url}{kind}: {self.store_error}")
        stale_after = 3 * self.interval + 5
        last = self.last_pass_ok if self.last_pass_ok is not None else self.started_at
        if t - last > stale_after:
            problems.append(f"no successful pass for {t - last:.0f}s")
        if self.ring is not None and self.ring.encrypting_key(t) is None:
            problems.append("the ring has no active key")
        for target in self.targets:
            if target.last_error is not None:
                problems.append(f"target {target.name}: {target.last_error}")
            elif target.apply_owed:
                problems.append(f"target {target.name}: a change is waiting to be applied")
        for check in self.health_checks:
            problems.extend(check(t))
        return problems


def about_store(store: KeyStore, exc: BaseException) -> str:
    """``exc``'s message without the store's name in front, for lines that begin
    "store URL: ": stores start their messages with their URL (already scrubbed of
    credentials) or, for a file, its path."""
    message = str(exc)
    for name in (store.url, getattr(store, "path", None)):
        prefix = f"{name}: "
        if name and message.startswith(prefix):
            return message[len(prefix):]
    return message


def is_permanent(exc: BaseException) -> bool:
    """Whether a store error will not fix itself by waiting.

    A corrupt ring, a wrong key-encryption key and a denied permission stay
    so until someone acts; a refused connection or a held lock may not.
    """
    if isinstance(exc, (StoreCorrupt, SealingError)):
        return True
    return isinstance(exc.__cause__, PermissionError)


def next_boundary(ring: Keyring, now: float) -> float:
    """The next instant a key activates, retires or expires (math.inf if none)."""
    later = [t for k in ring.keys for t in (k.activates_at, k.retires_at, k.expires_at)
             if t > now]
    return min(later, default=math.inf)
