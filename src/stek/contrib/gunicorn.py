"""gunicorn: serve stek's shared, rotated ticket keys from every worker.

In the gunicorn config file (``gunicorn -c gunicorn.conf.py``)::

    import stek.contrib.gunicorn

    certfile = "/etc/ssl/server.pem"
    keyfile = "/etc/ssl/server.key"
    ssl_context = stek.contrib.gunicorn.ssl_context

and ``STEK_STORE=file:/run/stek/keyring.json`` in the environment (or the
default path).  gunicorn calls ``ssl_context(config,
default_ssl_context_factory)`` (gunicorn/sock.py, ``ssl_context()``); its sync
and gthread workers call it for every accepted connection
(``ssl_wrap_socket``), the asgi, gevent and tornado workers once.  Without
this hook each call builds a new context with a new random ticket key, so
even one sync worker never resumes a session.  Here the first call in a
worker builds the context with gunicorn's own factory (certfile, keyfile,
ca_certs, cert_reqs, ciphers, ALPN), installs stek with ``rotate=True``
(``STEK_ROTATE=0``: read-only, see :mod:`stek.contrib`), and every later
call in that worker returns that same context.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from ..installation import Installation
from . import PerProcessContext

__all__ = ["installation", "ssl_context"]

_CONTEXT = PerProcessContext("stek.contrib.gunicorn")


def ssl_context(config: Any, default_ssl_context_factory: Callable[[], ssl.SSLContext],
                ) -> ssl.SSLContext:
    """gunicorn's ``ssl_context`` server hook (exactly two arguments: gunicorn checks).

    ``config`` is gunicorn's ``Config``; it is not read: the certificate
    settings reach the context through ``default_ssl_context_factory``.
    """
    return _CONTEXT.get(default_ssl_context_factory)


def installation() -> Installation | None:
    """The calling worker's installation (counters, ring); None before its first TLS connection."""
    return _CONTEXT.installation()
