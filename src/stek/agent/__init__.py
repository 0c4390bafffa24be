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
runs in its own process group, killed whole on its timeout and when the
agent stops, with the agent's secrets scrubbed from its environment
(:mod:`stek._command`).

**Store errors.**  A store that cannot be reached is retried with backoff.
One that answers but cannot be used (a corrupt file, a wrong key-encryption
key, permission denied) will not fix itself: that is said once, as an
ERROR, ``/healthz`` keeps failing, and it is re-read at the backoff's
maximum in case the operator fixes it.  The backoffs and the interval are
each agent's and target's own (keyword arguments of :class:`Agent` and
:class:`Target`; the module constants are their defaults).  Meanwhile the targets keep being
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

The agent is three modules: :mod:`stek.agent.loop` (the run loop, its
signal thread, store errors and health), :mod:`stek.agent.targets` (exports,
reloads, HAProxy's runtime API, the publish_ahead advice) and
:mod:`stek.agent.metrics` (``/metrics`` and ``/healthz``).  Their names are
all importable from here.  Reading the ``stek agent`` options (``--export``
and the options that follow it, ``--metrics-addr``) into these is the CLI's
job (:mod:`stek.cli.agent`).
"""

from __future__ import annotations

from .._command import RELOAD_TIMEOUT, CommandResult, reload_environment, run_command
from .loop import BACKOFF_MAX as BACKOFF_MAX
from .loop import BACKOFF_MIN as BACKOFF_MIN
from .loop import MAX_SLEEP as MAX_SLEEP
from .loop import RESEED_CHECK as RESEED_CHECK
from .loop import STOP_SIGNALS as STOP_SIGNALS
from .loop import Agent, about_store, is_permanent, next_boundary
from .loop import Clock as Clock
from .loop import RingHook as RingHook
from .metrics import (
    DEFAULT_METRICS_ADDR,
    AgentCollector,
    MetricsServer,
    check_metrics_host,
)
from .metrics import METRICS_MAX_CONNECTIONS as METRICS_MAX_CONNECTIONS
from .metrics import METRICS_TIMEOUT as METRICS_TIMEOUT
from .metrics import is_loopback as is_loopback
from .targets import RETRY_MAX as RETRY_MAX
from .targets import RETRY_MIN as RETRY_MIN
from .targets import Target, TargetSpec, build_targets, publish_ahead_warnings

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
    "publish_ahead_warnings",
    "reload_environment",
    "run_command",
]
