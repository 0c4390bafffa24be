"""uvicorn: serve stek's shared, rotated ticket keys from every worker.

::

    import uvicorn
    import stek.contrib.uvicorn

    uvicorn.run("app:app", host="0.0.0.0", port=443, workers=4,
                ssl_certfile="/etc/ssl/server.pem", ssl_keyfile="/etc/ssl/server.key",
                ssl_context_factory=stek.contrib.uvicorn.ssl_context_factory)

with ``STEK_STORE=file:/run/stek/keyring.json`` in the environment (or the
default path).  ``uvicorn.Config.load()`` calls ``ssl_context_factory(config,
default_factory)`` once in each worker process (uvicorn/config.py); with
``workers > 1`` the config, this function included, is pickled into spawned
workers, so it must be importable, as a module-level function is.  The
context is built by uvicorn's ``default_factory`` (so ``ssl_certfile``,
``ssl_keyfile``, ``ssl_ca_certs``, ``ssl_cert_reqs``, ``ssl_ciphers`` and ALPN
apply), stek is installed with ``rotate=True`` (``STEK_ROTATE=0``: read-only, see
:mod:`stek.contrib`), and the same context is
returned if uvicorn asks again in that process.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..installation import Installation
from . import PerProcessContext

if TYPE_CHECKING:
    from uvicorn.config import Config

__all__ = ["installation", "ssl_context_factory"]

_CONTEXT = PerProcessContext("stek.contrib.uvicorn")


def ssl_context_factory(config: Config, default_factory: Callable[[], ssl.SSLContext],
                        ) -> ssl.SSLContext:
    """uvicorn's ``ssl_context_factory``: the worker's one context, with stek installed.

    ``config`` is not read: uvicorn's ``default_factory`` already applies its
    TLS settings (and raises if ``ssl_certfile`` is missing).  The first call
    in a process wins: a second ``Config`` in the same process gets the same
    context.
    """
    return _CONTEXT.get(default_factory)


def installation() -> Installation | None:
    """The calling worker's installation (counters, ring), or None before uvicorn loaded."""
    return _CONTEXT.installation()
