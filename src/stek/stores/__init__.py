"""Key stores and ``open_store(url)``.

URLs:

* ``file:PATH`` (or ``file://PATH``, or a bare path): the embedded default,
  :class:`~stek.stores.file.FileStore`;
* ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` and
  ``etcd://``, ``etcds://``: shared fleet stores (see :mod:`stek.stores.redis`,
  :mod:`stek.stores.etcd`; the grammar, credentials and the scrubbed display
  form are in :mod:`stek.stores.url`);
* ``memory:``: an in-process store, for tests.

``STEK_STORE`` in the environment selects the store wherever none is given.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .base import KeyStore, Mutator, Subscription
from .file import FileStore, default_path
from .memory import MemoryStore
from .url import scrub

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
ETCD_SCHEMES = ("etcd", "etcds")

ENV_VAR = "STEK_STORE"


def default_url() -> str:
    """``$STEK_STORE`` if set, else ``file:`` + :func:`~stek.stores.file.default_path`.

    A set but empty ``$STEK_STORE`` is refused, as an empty URL is: it is a
    mistake (a template that left it out), never a request for the default.
    """
    url = os.environ.get(ENV_VAR)
    if url is None:
        return f"file:{default_path()}"
    if not url.strip():
        raise ConfigError(f"${ENV_VAR} is set but empty: unset it for the default store "
                          f"(file:{default_path()}) or set it to a store URL")
    return url


def _require(module: str, extra: str, scheme: str) -> None:
    """One line naming the extra to install when a store's client library is missing."""
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(
            f"{scheme}:// stores need the {module} package: pip install 'stek[{extra}]'"
        ) from None


def open_store(url: str | KeyStore | None = None, **options: Any) -> KeyStore:
    """Open the store named by ``url`` (a store object is returned as is).

    ``None`` means ``$STEK_STORE``, then the default file path; an empty
    string is an error, never the default.  ``options`` go to shared stores
    (for example ``insecure_plaintext=True``).  The grammar of every URL is
    in :mod:`stek.stores.url`.
    """
    if url is None:
        url = default_url()
    if not isinstance(url, str):
        return url
    text = url.strip()
    if not text:
        raise ConfigError("empty store URL: use file:PATH, redis://HOST:PORT/DB "
                          "or etcd://HOST:PORT/PREFIX")
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower() if sep else ""
    if scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        if not path or path.startswith("?"):
            raise ConfigError(f"{scrub(text)!r}: no path (use file:PATH)")
        return FileStore.from_url(path)
    if scheme == "memory":
        return MemoryStore()
    if scheme in REDIS_SCHEMES:
        _require("redis", "redis", scheme)
        from .redis import RedisStore

        return RedisStore.from_url(text, **options)
    if scheme in ETCD_SCHEMES:
        _require("etcd3gw", "etcd", scheme)
        from .etcd import EtcdStore

        return EtcdStore.from_url(text, **options)
    if not sep or text.startswith(("/", "./", "../", "~")):
        return FileStore(text)
    raise ConfigError(
        f"unknown store URL {scrub(text)!r}: use file:PATH, redis://HOST:PORT/DB, "
        f"redis+sentinel://HOSTS/MASTER/DB or etcd://HOST:PORT/PREFIX"
    )


__all__ = [
    "ENV_VAR",
    "FileStore",
    "KeyStore",
    "MemoryStore",
    "Mutator",
    "Subscription",
    "default_url",
    "open_store",
]
