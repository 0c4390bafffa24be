"""hypercorn: serve stek's shared, rotated ticket keys from every worker.

::

    from hypercorn.run import run
    import stek.contrib.hypercorn

    config = stek.contrib.hypercorn.Config()
    config.application_path = "app:app"
    config.bind = ["0.0.0.0:443"]
    config.certfile, config.keyfile = "/etc/ssl/server.pem", "/etc/ssl/server.key"
    config.workers = 4
    run(config)

with ``STEK_STORE=file:/run/stek/keyring.json`` in the environment (or the
default path).  Each hypercorn worker (a process started with
multiprocessing's spawn, the config pickled into it: hypercorn/run.py) calls
``config.create_ssl_context()`` once (hypercorn/asyncio/run.py,
trio/run.py).  This :class:`Config` builds that context with hypercorn's own
method (certfile, keyfile, ciphers, ALPN, ca_certs) and installs stek with
``rotate=True``; a second call in the same worker returns the same context.
hypercorn's command line has no hook for the context: run it from Python.
"""

from __future__ import annotations

import ssl

from hypercorn.config import Config as _HypercornConfig

from ..installation import Installation
from . import PerProcessContext

__all__ = ["Config", "installation"]

_CONTEXT = PerProcessContext("stek.contrib.hypercorn")


class Config(_HypercornConfig):
    """hypercorn's Config whose TLS context serves stek's keys (importable, so it pickles)."""

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if not self.ssl_enabled:
            return None
        def build() -> ssl.SSLContext:
            ctx = super(Config, self).create_ssl_context()
            assert ctx is not None  # ssl_enabled
            return ctx

        return _CONTEXT.get(build)


def installation() -> Installation | None:
    """The calling worker's installation (counters, ring); None before its context exists."""
    return _CONTEXT.installation()
