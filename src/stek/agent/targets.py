"""The agent's targets: each export written out, its reload commands
run (or HAProxy's runtime API updated), their health, and the
publish_ahead advice about a configuration (see :mod:`stek.agent`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._command import RELOAD_TIMEOUT, run_command
from ..errors import ConfigError
from ..export import ExportError, Rendered, is_directory_format, render, write
from ..export import haproxy as haproxy_export
from ..keyring import Keyring
from ..schedule import Policy
from ..scope import check_scope, scoped

log = logging.getLogger("stek.agent")

#: Default backoff bounds for a failed export, reload or runtime API update
#: (seconds; each target's own are Target's retry_min and retry_max).
RETRY_MIN, RETRY_MAX = 1.0, 30.0


@dataclass(frozen=True)
class TargetSpec:
    """One export: its format and path, the scope whose keys it holds (None: the
    ring's own), and every server instance that reads it (each reload command,
    each HAProxy runtime API socket).  The CLI builds one per ``--export``
    (:func:`stek.cli.agent.parse_export`)."""

    format: str
    path: Path
    reloads: tuple[str, ...] = ()
    haproxy_sockets: tuple[Path, ...] = ()
    scope: str | None = None

    @property
    def name(self) -> str:
        return f"{self.format}:{self.path}"


class Target:
    """One export target: its files, its reload (or runtime API) and their health.

    A failure is retried after ``retry_min`` seconds, doubling up to
    ``retry_max``, until the target is current again.
    """

    def __init__(self, spec: TargetSpec, *, reload_timeout: float = RELOAD_TIMEOUT,
                 retry_min: float = RETRY_MIN, retry_max: float = RETRY_MAX,
                 env: Mapping[str, str] | None = None) -> None:
        if not 0 < retry_min <= retry_max:
            raise ConfigError(f"target {spec.name}: the retry bounds must satisfy "
                              f"0 < retry_min <= retry_max (got {retry_min:g}, {retry_max:g})")
        try:
            check_scope(spec.scope)
        except ConfigError as exc:
            raise ConfigError(f"target {spec.name}: scope {spec.scope!r}: {exc}") from None
        self.spec = spec
        self.name = spec.name
        self.reload_timeout = reload_timeout
        self.retry_min = retry_min
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
        self._delay = retry_min
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
            self._delay = self.retry_min

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
    """A :class:`Target` per spec (``options`` go to each); ConfigError if two
    write one path, or if a path's parent directory is missing."""
    targets = [Target(s, **options) for s in specs]
    seen: dict[Path, Target] = {}
    for t in targets:
        if t.spec.path in seen:
            raise ConfigError(f"targets {seen[t.spec.path].name} and {t.name} both write "
                              f"{t.spec.path}")
        seen[t.spec.path] = t
        # The export creates at most its last directory: a missing parent is a
        # mistyped path, said now rather than at every pass.
        directory = t.spec.path if is_directory_format(t.spec.format) else t.spec.path.parent
        if not directory.is_dir() and not directory.parent.is_dir():
            raise ConfigError(f"target {t.name}: {directory.parent} does not exist (stek "
                              f"creates only the last directory: check the path)")
    return targets


def publish_ahead_warnings(policy: Policy, interval: float,
                           targets: Sequence[Target]) -> list[str]:
    """Configurations that break (or weaken) the publish_ahead rule, as sentences.

    They are logged by the agent, whoever built it: each names the setting
    (the agent's interval, a target's reload timeout) with the ``stek agent``
    option that sets it in parentheses.
    """
    notes = []
    ahead = policy.publish_ahead
    if interval >= ahead:
        notes.append(
            f"the agent re-reads the store every {interval:g}s but keys are published only "
            f"{ahead}s ahead: a key another host added may be used before this host exports it "
            f"(lower the interval, --interval, below publish_ahead, or raise publish_ahead)"
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
                f"(its reload timeout, --reload-timeout), not less than publish_ahead "
                f"({ahead}s)"
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
            how = ("reload command or runtime API socket (--reload or --haproxy-socket)"
                   if t.spec.format == "haproxy" else "reload command (--reload)")
            notes.append(
                f"target {t.name}: no {how}: the server reads these keys only when it "
                f"starts or reloads"
            )
    return notes
