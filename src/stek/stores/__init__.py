"""Key stores and ``open_store(url)``.

URLs:

* ``file:PATH`` (or ``file://PATH``, or a bare path): the embedded default,
  :class:`~stek.stores.file.FileStore`;
* ``redis://...`` / ``rediss://...`` and ``etcd://host:port/prefix``: shared
  fleet stores (see :mod:`stek.stores.redis`, :mod:`stek.stores.etcd`);
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

ENV_VAR = "STEK_STORE"


def default_url() -> str:
    """``$STEK_STORE`` if set, else ``file:`` + :func:`~stek.stores.file.default_path`."""
    return os.environ.get(ENV_VAR) or f"file:{default_path()}"


def open_store(url: str | KeyStore | None = None, **options: Any) -> KeyStore:
    """Open the store named by ``url`` (a store object is returned as is).

    ``None`` means ``$STEK_STORE``, then the default file path.  ``options``
    go to shared stores (for example ``insecure_plaintext=True``).
    """
    if url is None:
        url = default_url()
    if not isinstance(url, str):
        return url
    text = url.strip()
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower() if sep else ""
    if scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        if not path or path.startswith("?"):
            path = str(default_path()) + path
        return FileStore.from_url(path)
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisStore

        return RedisStore.from_url(text, **options)
    if scheme == "etcd":
        from .etcd import EtcdStore

        return EtcdStore.from_url(text, **options)
    if not sep or text.startswith(("/", "./", "../", "~")):
        return FileStore(text)
    raise ConfigError(
        f"unknown store URL {text.split('@')[-1]!r}: use file:PATH, redis://HOST:PORT/DB "
        f"or etcd://HOST:PORT/PREFIX"
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
