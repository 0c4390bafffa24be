"""``stek agent``: the long-running rotator, and the targets it keeps current.

Each pass (:meth:`Agent.step`) rotates the ring if due (creating it if the
store is empty), then brings every target up to date:

* **export**: lay the ring out for the target's server (:mod:`stek.export`)
  and write what changed (0600, atomic);
* **apply**: after a change, run the target's reload command, or for
  HAProxy push the keys through the runtime API (``set ssl tls-key``,
  checked with ``show tls-keys``, no reload at all).

A reload runs once per change (several changes waiting for one reload are
covered by it), its exit status is logged, and a failed reload stays owed:
it is retried with backoff, counted in ``/metrics`` and shown by
``/healthz``, until it succeeds.  Reload commands are operator-supplied
strings run by ``/bin/sh -c``, as a cron line or a systemd ``ExecReload=``
would be: the agent's configuration must be as trusted as those are.  Each
runs in its own process group, killed whole on ``--reload-timeout`` and when
the agent stops, with the agent's secrets scrubbed from its environment
(:mod:`stek._command`).

**Store errors.**  A store that cannot be reached is retried with backoff.
One that answers but cannot be used (a corrupt file, a wrong key-encryption
key, permission denied) will not fix itself: that is said once, as an
ERROR, ``/healthz`` keeps failing, and it is re-read every ``BACKOFF_MAX``
seconds in case the operator fixes it.  Meanwhile the targets keep being
exported from the last ring read, so servers keep the keys they have (and
follow the keys' own activation and retirement).

The pass sleeps until the next instant anything changes: a key is due
(:func:`~stek.schedule.next_change`), a key activates or retires (servers
encrypt with the active key, so the export's order changes then), a retry
is due, or ``interval`` has passed (the backstop that picks up other hosts'
rotations and repairs targets).  A store notification wakes it sooner.

**The publish_ahead rule.**  A key is published ``publish_ahead`` before it
activates, so that every server holds it before any server encrypts with
it.  That only works if every target picks the new key up within
``publish_ahead``: the agent's ``interval``, the reload retry backoff and
the reload's own duration must all stay well under it.
:func:`publish_ahead_warnings` says when a configuration breaks the rule.

Logs and metrics name keys by their public 16-byte name; key bytes never
appear in logs, metrics, exceptions or reload commands.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import _httpd
from ._command import RELOAD_TIMEOUT, CommandResult, reload_environment, run_command
from ._storeprobe import StoreProbe
from .errors import ConfigError, SealingError, StekError, StoreCorrupt
from .export import FORMATS, ExportError, Rendered, is_directory_format, render, write
from .export import haproxy as haproxy_export
from .keyring import Keyring
from .rotation import rotate
from .schedule import Policy, State, next_change, state_of
from .scope import check_scope, scoped
from .stores import KeyStore, Subscription

log = logging.getLogger("stek.agent")

#: Even with nothing due, re-read at least this often (seconds): another
#: writer may have changed the ring, and targets may need a retry.
MAX_SLEEP = 30.0
#: Longest time between two reads of a fleet store (stek's installations
#: re-read as often: stek._refresh.BACKSTOP_INTERVAL).
RESEED_CHECK = 5.0
#: Backoff bounds while the store is unreachable (seconds).
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
#: Backoff bounds for a failed export, reload or runtime API update (seconds).
RETRY_MIN, RETRY_MAX = 1.0, 30.0
#: Default address of /metrics and /healthz: loopback only.
DEFAULT_METRICS_ADDR = "127.0.0.1:9477"
#: The signals that stop the agent (systemd's stop, Ctrl-C).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def _deferred(signum: int, frame: object) -> None:
    """The Python-level handler of STOP_SIGNALS: none; see Agent.install_signal_handlers."""


RingHook = Callable[[Keyring], None]
Clock = Callable[[], float]


# -- targets ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetSpec:
    """What ``--export FORMAT:PATH [--scope NAME] [--reload CMD]... [--haproxy-socket PATH]...``
    asked for: one export, the scope whose keys it holds (None: the ring's own), and
    every server instance that reads it (each reload command, each runtime API socket)."""

    format: str
    path: Path
    reloads: tuple[str, ...] = ()
    haproxy_sockets: tuple[Path, ...] = ()
    scope: str | None = None

    @classmethod
    def parse(cls, text: str, reloads: Sequence[str] = (),
              haproxy_sockets: Sequence[str] = (), scope: str | None = None) -> TargetSpec:
        fmt, sep, path = text.partition(":")
        if not sep or not path:
            raise ConfigError(f"--export {text!r}: use FORMAT:PATH, FORMAT one of "
                              f"{', '.join(FORMATS)}")
        if fmt not in FORMATS:
            raise ConfigError(f"--export {text!r}: unknown format {fmt!r} (use one of "
                              f"{', '.join(FORMATS)})")
        if haproxy_sockets and fmt != "haproxy":
            raise ConfigError(f"--haproxy-socket follows --export {text!r}: it only applies to "
                              f"an haproxy export")
        if haproxy_sockets and reloads:
            raise ConfigError(f"--export {text!r}: give either --reload or --haproxy-socket "
                              f"(the runtime API needs no reload)")
        if any(not r.strip() for r in reloads):
            raise ConfigError(f"--export {text!r}: empty --reload command")
        if len(set(reloads)) != len(reloads):
            raise ConfigError(f"--export {text!r}: the same --reload twice")
        sockets = tuple(Path(h).expanduser().absolute() for h in haproxy_sockets)
        if len(set(sockets)) != len(sockets):
            raise ConfigError(f"--export {text!r}: the same --haproxy-socket twice")
        try:
            check_scope(scope)
        except ConfigError as exc:
            raise ConfigError(f"--export {text!r} --scope {scope!r}: {exc}") from None
        return cls(fmt, Path(path).expanduser().absolute(), tuple(reloads), sockets, scope)

    @property
    def name(self) -> str:
        return f"{self.format}:{self.path}"


class Target:
    """One export target: its files, its reload (or runtime API) and their health."""

    def __init__(self, spec: TargetSpec, *, reload_timeout: float = RELOAD_TIMEOUT,
                 retry_max: float = RETRY_MAX, env: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.reload_timeout = reload_timeout
        self.retry_max = retry_max
        self.env = env  # the reload command's environment (None: the agent's own)
        self.cancel: threading.Event | None = None  # set when the agent stops
        self.runtimes = [haproxy_export.Runtime(sock) for sock in spec.haproxy_sockets]
        # Health, read by /metrics and /healthz (plain values: read without locks).
        self.last_export_ok: float | None = None
        self.export_failures = 0
        self.export_error: str | None = None
        self.changes = 0
        self.last_apply_ok: float | None = None  # reload command or runtime API update
        self.apply_failures = 0
        self.apply_error: str | None = None
        self.applies = 0
        self.apply_owed = False  # a change not yet picked up by the server
        self.last_reload_seconds: float | None = None
        self.encrypting: bytes = b""
        self._retry_at: float | None = None
        self._delay = RETRY_MIN
        self._owed_reloads: list[str] = []  # the reload commands a change still waits for

    def __repr__(self) -> str:
        return f"Target({self.name!r})"

    @property
    def applies_changes(self) -> bool:
        return bool(self.spec.reloads or self.runtimes)

    @property
    def retry_at(self) -> float | None:
        """When this target wants another pass (a failure to retry), or None."""
        return self._retry_at

    @property
    def last_error(self) -> str | None:
        return self.export_error or self.apply_error

    def _failed(self, now: float, what: str, message: str, detail: str = "") -> str:
        """Log a failure (with ``detail``, for the log only); the one-line status to show."""
        self._retry_at = now + self._delay
        log.warning("target %s: %s failed: %s%s; retrying in %.1fs", self.name, what, message,
                    f" ({detail})" if detail else "", self._delay)
        self._delay = min(self.retry_max, self._delay * 2)
        return f"{what}: {message}"

    def sync(self, ring: Keyring, now: float) -> None:
        """Export ``ring`` as of ``now``; then reload (or push) if a change is owed.

        The export runs on every pass (it writes nothing when nothing
        changed).  A failed reload or push waits for its retry time, unless
        a new change arrives, which is applied at once.
        """
        retry_due = self._retry_at is None or now >= self._retry_at
        try:
            rendered = render(self.spec.format, scoped(ring, self.spec.scope), now,
                              self.spec.path)
            result = write(rendered, self.spec.path)
        except ExportError as exc:
            self.export_failures += 1
            self.export_error = self._failed(now, "export", str(exc))
            return
        self.last_export_ok = now
        self.export_error = None
        self.encrypting = rendered.encrypting
        if result.created is not None:
            log.info("target %s: created directory %s (mode 0700)", self.name, result.created)
        if result.changed:
            self.changes += 1
            log.info("target %s: wrote %d file(s), removed %d; encrypting key %s",
                     self.name, len(result.written), len(result.removed),
                     rendered.encrypting.hex())
            if self.applies_changes:
                self.apply_owed = True
                self._owed_reloads = list(self.spec.reloads)  # every instance reloads again
        if self.runtimes and (result.changed or retry_due):
            # Checked on every pass, not only after a change: a restarted or
            # hand-edited HAProxy is brought back to the file's keys.
            self._push(rendered, now)
        elif self._owed_reloads and (result.changed or retry_due):
            self._reload(now)
        if self.export_error is None and self.apply_error is None:
            self._retry_at = None
            self._delay = RETRY_MIN

    def _label(self, what: str, i: int, n: int) -> str:
        return what if n == 1 else f"{what} {i + 1} of {n}"

    def _reload(self, now: float) -> None:
        """Run each reload command still owed; those that fail stay owed (retried)."""
        failed: list[str] = []
        errors: list[str] = []
        n = len(self.spec.reloads)
        for command in self._owed_reloads:
            label = self._label("reload", self.spec.reloads.index(command), n)
            result = run_command(command, self.reload_timeout, env=self.env, cancel=self.cancel)
            self.last_reload_seconds = result.seconds
            if result.returncode == 0:
                log.info("target %s: %s exited 0 in %.2fs", self.name, label, result.seconds)
                continue
            failed.append(command)
            # /healthz shows the status only: the command's output is for the log.
            if result.returncode is None:
                errors.append(self._failed(now, label, f"did not finish: {result.detail}"))
            else:
                errors.append(self._failed(now, label, f"exited {result.returncode}",
                                           result.detail))
        self._owed_reloads = failed
        if failed:
            self.apply_failures += 1
            self.apply_error = "; ".join(errors)
            return
        self.applies += 1
        self.apply_owed = False
        self.apply_error = None
        self.last_apply_ok = now

    def _push(self, rendered: Rendered, now: float) -> None:
        errors: list[str] = []
        n = len(self.runtimes)
        changed = False  # an HAProxy already holding the file's keys is not an apply
        for i, runtime in enumerate(self.runtimes):
            try:
                pushed = runtime.sync(self.spec.path, haproxy_export.lines_of(rendered))
            except ExportError as exc:
                errors.append(self._failed(now, self._label("runtime API", i, n), str(exc)))
                continue
            if pushed:
                changed = True
                log.info("target %s: runtime API %s: %d key(s) set, 'show tls-keys' verified; "
                         "encrypting key %s", self.name, runtime.socket_path, pushed,
                         rendered.encrypting.hex())
        if errors:
            self.apply_failures += 1
            self.apply_owed = True
            self.apply_error = "; ".join(errors)
            return
        if changed:
            self.applies += 1
        self.apply_owed = False
        self.apply_error = None
        self.last_apply_ok = now


def build_targets(specs: Iterable[TargetSpec], **options: Any) -> list[Target]:
    targets = [Target(s, **options) for s in specs]
    seen: set[Path] = set()
    for t in targets:
        if t.spec.path in seen:
            raise ConfigError(f"two --export targets write {t.spec.path}")
        seen.add(t.spec.path)
        # The export creates at most its last directory: a missing parent is a
        # mistyped path, said now rather than at every pass.
        directory = t.spec.path if is_directory_format(t.spec.format) else t.spec.path.parent
        if not directory.is_dir() and not directory.parent.is_dir():
            raise ConfigError(f"--export {t.name}: {directory.parent} does not exist (stek "
                              f"creates only the last directory: check the path)")
    return targets


def publish_ahead_warnings(policy: Policy, interval: float,
                           targets: Sequence[Target]) -> list[str]:
    """Configurations that break (or weaken) the publish_ahead rule, as sentences."""
    notes = []
    ahead = policy.publish_ahead
    if interval >= ahead:
        notes.append(
            f"the agent re-reads the store every {interval:g}s but keys are published only "
            f"{ahead}s ahead: a key another host added may be used before this host exports it "
            f"(lower --interval below publish_ahead, or raise publish_ahead)"
        )
    for t in targets:
        if t.spec.reloads and t.retry_max >= ahead:
            notes.append(
                f"target {t.name}: a failed reload is retried after up to {t.retry_max:g}s, "
                f"not less than publish_ahead ({ahead}s)"
            )
        if t.spec.reloads and t.reload_timeout >= ahead:
            notes.append(
                f"target {t.name}: the reload may take up to {t.reload_timeout:g}s "
                f"(--reload-timeout), not less than publish_ahead ({ahead}s)"
            )
        if t.last_reload_seconds is not None and t.last_reload_seconds * 2 >= ahead:
            notes.append(
                f"target {t.name}: its last reload took {t.last_reload_seconds:.1f}s, more than "
                f"half of publish_ahead ({ahead}s)"
            )
        if t.spec.format == "haproxy" and policy.accept_for > policy.rotate_every:
            notes.append(
                f"target {t.name}: HAProxy holds 3 keys, so its tickets resume for about "
                f"{policy.rotate_every}-{2 * policy.rotate_every}s, not the ring's "
                f"{policy.window}s"
            )
        if t.spec.format == "apache":
            notes.append(
                f"target {t.name}: Apache holds a single key: tickets stop resuming there at "
                f"every rotation (every {policy.rotate_every}s)"
            )
        if not t.applies_changes and t.spec.format != "openssl":
            how = "--reload or --haproxy-socket" if t.spec.format == "haproxy" else "--reload"
            notes.append(
                f"target {t.name}: no {how}: the server reads these keys only when it "
                f"starts or reloads"
            )
    return notes


# -- the agent ----------------------------------------------------------------------------

class Agent:
    def __init__(self, store: KeyStore, *, policy: Policy | None = None,
                 clock: Clock = time.time, targets: Sequence[Target] = (),
                 interval: float = MAX_SLEEP) -> None:
        if not interval > 0:
            raise ConfigError("the agent's interval must be positive")
        self.store = store
        self.policy = policy or Policy()
        self.clock = clock
        self.targets = list(targets)
        self.interval = interval
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
            # is found, and re-seeded, within RESEED_CHECK seconds.
            due = min(due, now + RESEED_CHECK)
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
        :func:`is_permanent`) once, as an ERROR, then re-read every BACKOFF_MAX.
        """
        self.store_failures += 1
        message = about_store(self.store, exc)
        if is_permanent(exc):
            retry_in = BACKOFF_MAX
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

    def run(self) -> None:
        backoff = BACKOFF_MIN
        log.info("stek agent started on %s", self.store.url)
        sub: Subscription | None = None
        try:
            sub = self.store.subscribe(self.wake_event.set)
        except StekError as exc:
            log.warning("store %s: no change notification (%s); polling every %gs",
                        self.store.url, about_store(self.store, exc), self.interval)
        try:
            while not self.stop_event.is_set():
                try:
                    wait = self.step()
                    backoff = BACKOFF_MIN
                except StekError as exc:
                    wait = self.store_failed(exc, backoff)
                    backoff = min(BACKOFF_MAX, backoff * 2)
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


# -- /metrics and /healthz ----------------------------------------------------------------

class AgentCollector(Collector):
    """Metrics drawn from the agent's state at scrape time (no stale label sets).

    With a ``probe`` (the metrics server's), the store's servers are shown as
    it last found them; without one, they are probed at collection time.
    """

    def __init__(self, agent: Agent, probe: StoreProbe | None = None) -> None:
        self.agent = agent
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        now = a.clock()
        ring = a.ring
        yield _counter("stek_rotations", "Passes that changed the ring.", a.rotations)
        yield _counter("stek_store_failures", "Passes that could not read or write the store.",
                       a.store_failures)
        yield from _store_health(a.store, self.probe)
        yield _counter("stek_store_rollbacks_refused",
                       "Store values refused for carrying an older generation than one seen.",
                       getattr(a.store, "rollbacks_refused", 0))
        yield _counter("stek_store_reseeds",
                       "Times the agent wrote its last ring back to a store found empty or "
                       "rolled back.", getattr(a.store, "reseeds", 0))
        yield _counter("stek_keys_revoked", "Keys seen revoked ('stek revoke') since start.",
                       a.revocations)
        yield _gauge("stek_agent_last_pass_timestamp_seconds",
                     "When the last successful pass ran.", a.last_pass_ok)
        if ring is not None:
            yield _gauge("stek_ring_generation", "Generation of the ring last read.",
                         ring.generation)
            yield _gauge("stek_next_rotation_timestamp_seconds",
                         "When the agent will next add or drop keys (Unix time).",
                         next_change(ring.keys, ring.policy, int(now)))
            yield _gauge("stek_next_key_change_timestamp_seconds",
                         "When a key next activates, retires or expires (Unix time).",
                         next_boundary(ring, now))
            yield _gauge("stek_publish_ahead_seconds", "The ring's publish_ahead.",
                         ring.policy.publish_ahead)
            counts = GaugeMetricFamily("stek_keys", "Keys in the ring by state.",
                                       labels=["state"])
            ages = GaugeMetricFamily(
                "stek_key_age_seconds",
                "Seconds since each key activated (negative while pending).",
                labels=["name", "state"])
            by_state = dict.fromkeys(State, 0)
            for k in ring.keys:
                st = state_of(k, now)
                by_state[st] += 1
                ages.add_metric([k.name.hex(), st.value], now - k.activates_at)
            for st, n in by_state.items():
                counts.add_metric([st.value], n)
            yield counts
            yield ages
            enc = ring.encrypting_key(now)
            if enc is not None:
                yield _gauge("stek_active_key_age_seconds",
                             "Seconds since the encrypting key activated.",
                             now - enc.activates_at)
        labels = ["target", "format"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "export_ok": GaugeMetricFamily(
                "stek_target_last_export_success_timestamp_seconds",
                "Last time the target's files were written or found current.", labels=labels),
            "export_fail": CounterMetricFamily(
                "stek_target_export_failures", "Failed exports.", labels=labels),
            "changes": CounterMetricFamily(
                "stek_target_changes", "Exports that changed the target's files.",
                labels=labels),
            "apply_ok": GaugeMetricFamily(
                "stek_target_last_reload_success_timestamp_seconds",
                "Last successful reload command (or HAProxy runtime API update).",
                labels=labels),
            "apply_fail": CounterMetricFamily(
                "stek_target_reload_failures",
                "Failed reload commands (or HAProxy runtime API updates).", labels=labels),
            "applies": CounterMetricFamily(
                "stek_target_reloads", "Successful reloads (or runtime API updates).",
                labels=labels),
            "owed": GaugeMetricFamily(
                "stek_target_reload_pending",
                "1 while a change waits for a successful reload.", labels=labels),
        }
        for t in a.targets:
            lv = [t.name, t.spec.format]
            if t.last_export_ok is not None:
                families["export_ok"].add_metric(lv, t.last_export_ok)
            families["export_fail"].add_metric(lv, t.export_failures)
            families["changes"].add_metric(lv, t.changes)
            if t.last_apply_ok is not None:
                families["apply_ok"].add_metric(lv, t.last_apply_ok)
            families["apply_fail"].add_metric(lv, t.apply_failures)
            families["applies"].add_metric(lv, t.applies)
            families["owed"].add_metric(lv, 1 if t.apply_owed else 0)
        yield from families.values()


def _store_health(store: KeyStore, probe: StoreProbe | None) -> Iterator[Metric]:
    """stek_store_endpoint_up: each store server as stek sees it (see stek._storeprobe)."""
    if probe is None:
        probe = StoreProbe(store)
        probe.probe()
    yield _gauge("stek_store_last_probe_timestamp_seconds",
                 "When the store's servers were last probed.", probe.at)
    g = GaugeMetricFamily("stek_store_endpoint_up",
                          "1 if the store server answers; role, TLS and user as labels.",
                          labels=["endpoint", "role", "tls", "user"])
    h = probe.last
    if h is None:
        return
    for e in h.endpoints:
        g.add_metric([e.address, e.role, "1" if h.tls else "0", h.user or ""],
                     1.0 if e.reachable else 0.0)
    yield g


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--metrics-addr {text!r}: use HOST:PORT, for example "
                          f"{DEFAULT_METRICS_ADDR}")
    host = host.strip("[]")
    if int(port) > 65535:
        raise ConfigError(f"--metrics-addr {text!r}: port out of range")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Limits of the /metrics server (see :mod:`stek._httpd`).
METRICS_MAX_CONNECTIONS = _httpd.MAX_CONNECTIONS
METRICS_TIMEOUT = _httpd.TIMEOUT


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` for one agent.

    Bounded (:class:`stek._httpd.BoundedHTTPServer`): one loop thread and a
    few answering threads whatever the number of clients, at most
    ``max_connections`` open (a new one closes the oldest), ``timeout``
    seconds to send a request.  The store's servers are probed by a thread
    of their own (:class:`stek._storeprobe.StoreProbe`), never while a
    request waits.  A non-loopback ``host`` is refused unless ``public``:
    the page names keys and targets.
    """

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 0, *,
                 public: bool = False, max_connections: int = METRICS_MAX_CONNECTIONS,
                 timeout: float = METRICS_TIMEOUT) -> None:
        check_metrics_host(host, public)
        self.agent = agent
        #: The store is probed in the background: a hung store never holds a request.
        self.probe = StoreProbe(agent.store)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent, self.probe))
        try:
            self.httpd = _httpd.BoundedHTTPServer(self.app, host, port,
                                                  max_connections=max_connections,
                                                  timeout=timeout)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: "
                              f"{exc.strerror or exc}") from exc
        self.host = host
        self.port = int(self.httpd.address[1])

    def app(self, path: str) -> _httpd.Response:
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            problems = self.agent.health()
            text = "ok\n" if not problems else "".join(f"{p}\n" for p in problems)
            text += "".join(f"{n}\n" for n in self.agent.notes())
            return (200 if not problems else 503), text.encode(), "text/plain; charset=utf-8"
        return 404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8"

    def start(self) -> MetricsServer:
        self.probe.start()
        self.httpd.start()
        log.info("serving /metrics and /healthz on http://%s:%d (at most %d connections, "
                 "%gs per request)", self.host, self.port, self.httpd.max_connections,
                 self.httpd.timeout)
        return self

    def close(self) -> None:
        self.probe.close()
        self.httpd.close()


def check_metrics_host(host: str, public: bool) -> None:
    """Refuse a non-loopback address unless the operator said so (``--metrics-public``)."""
    if not public and not is_loopback(host):
        raise ConfigError(f"--metrics-addr {host}: not a loopback address; /metrics and "
                          f"/healthz name keys and targets: add --metrics-public to serve "
                          f"them there")


__all__ = [
    "DEFAULT_METRICS_ADDR",
    "RELOAD_TIMEOUT",
    "Agent",
    "AgentCollector",
    "CommandResult",
    "MetricsServer",
    "Target",
    "TargetSpec",
    "about_store",
    "build_targets",
    "check_metrics_host",
    "is_permanent",
    "next_boundary",
    "parse_addr",
    "publish_ahead_warnings",
    "reload_environment",
    "run_command",
]
