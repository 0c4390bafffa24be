"""Integrations for servers that build their own ``ssl.SSLContext``.

* :mod:`stek.contrib.gunicorn`: ``ssl_context``, gunicorn's config hook;
* :mod:`stek.contrib.uvicorn`: ``ssl_context_factory`` for ``uvicorn.run``.

Both read the store from ``$STEK_STORE`` (then the default file path) and
install with ``rotate=True``, so the shared ring is created, and rotated when
due, by the servers themselves: one host needs no agent.  Set
``STEK_ROTATE=0`` when something else rotates the ring (``stek agent``
exporting it to nginx or HAProxy on the same host): the workers then only
read it.  On a mirror (``stek agent --mirror``) they never rotate.

A store that cannot be read when a worker starts does not take TLS down: the
worker serves full handshakes without tickets, logs one warning, and picks
the ring up as soon as the store answers (see ``stek.install``).  Set
``STEK_STRICT=1`` to make the worker fail instead (the server then refuses
TLS connections until the store answers).  ``STEK_SCOPE=NAME`` serves that
key scope (docs/trust.md).

Pre-fork servers ask for a context in each worker, and gunicorn's sync and
gthread workers ask again on *every connection*.  Installing per connection
would start a refresher per connection and hand out a context that is freed
as soon as the connection closes.  :class:`PerProcessContext` therefore
builds exactly one context per process (keyed by ``os.getpid()``, so each
forked worker builds its own, with its own callback and counters) and hands
back that same object afterwards;
it holds the :class:`~stek.installation.Installation`, which keeps the callback
alive.  Neither gunicorn nor uvicorn is imported here.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable

from .._refresh import shared_store
from ..errors import ConfigError
from ..installation import Installation, install
from ..mirror import mirror_source
from ..stores import default_url

__all__ = ["ROTATE_ENV", "SCOPE_ENV", "STRICT_ENV", "PerProcessContext", "rotate_from_env",
           "strict_from_env"]

#: ``STEK_STRICT=1``: a worker whose store cannot be read at start raises.
STRICT_ENV = "STEK_STRICT"
#: ``STEK_ROTATE=0``: workers read the ring and never rotate it (the agent does).
ROTATE_ENV = "STEK_ROTATE"
#: ``STEK_SCOPE=NAME``: the workers serve that key scope (stek.scope).
SCOPE_ENV = "STEK_SCOPE"
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in _YES


def rotate_from_env() -> bool:
    """Whether the hooks rotate: yes unless ``$STEK_ROTATE`` says no (ConfigError if it
    says neither: a typo must not silently pick one)."""
    value = os.environ.get(ROTATE_ENV, "").strip().lower()
    if value and value not in _YES + _NO:
        raise ConfigError(f"${ROTATE_ENV}={value!r}: use 1 or 0")
    return value not in _NO


class PerProcessContext:
    """One server ``SSLContext`` with stek installed, per process.

    ``get(build)`` calls ``build()`` and installs stek on its result the first
    time it runs in a process; afterwards (in that process) it returns the
    same context without calling ``build`` again.  If ``build`` or the install
    raises, nothing is cached and the next call tries again.
    """

    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(name)
        self._lock = threading.Lock()
        # (pid, context, installation), replaced as one object so that a
        # reader never pairs one process's pid with another's context.
        self._state: tuple[int, ssl.SSLContext, Installation] | None = None
        # A lock held by another thread at fork() time stays held forever in
        # the child: give the child a fresh one.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def get(self, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        pid = os.getpid()
        state = self._state
        if state is not None and state[0] == pid:
            return state[1]  # the per-connection fast path: no lock, no I/O
        with self._lock:
            state = self._state
            if state is not None and state[0] == pid:
                return state[1]
            # Whatever a parent process built is dropped, not reused: each
            # worker serves from its own context and counts its own handshakes.
            self._state = None
            ctx = build()
            # The URL is parsed once (file:PATH?owner=NAME included); the mirror
            # check reads the very store that install() then reads.
            store = shared_store(default_url())
            # A host's mirror (stek agent --mirror) is rotated by its agent only.
            inst = install(ctx, store, rotate=rotate_from_env() and mirror_source(store) is None,
                           strict=strict_from_env(), scope=os.environ.get(SCOPE_ENV) or None)
            self._state = (pid, ctx, inst)
        self._log.info("stek installed in pid %d: store %s, generation %d, %d key(s)%s%s",
                       pid, inst.store.url, inst.ring.generation, len(inst.ring),
                       "" if inst.store_ok else ", store not answering yet",
                       "" if inst.rotate else ", read-only (not rotating)")
        return ctx

    def installation(self) -> Installation | None:
        """This process's installation (its counters, its ring), or None if none yet."""
        state = self._state
        if state is None or state[0] != os.getpid():
            return None
        return state[2]
