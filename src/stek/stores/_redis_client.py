"""A Redis URL to a redis-py client: where, how (TLS, Sentinel), and under which name.

The URL grammar and credentials are :mod:`stek.stores.url`'s; this module
reads what is Redis's in it (database, prefix, TLS files, ``min_replicas``,
``wait_timeout``) and builds the client, which connects on first use.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from .._duration import parse_seconds
from ..errors import ConfigError
from .url import StoreURL, parse

DEFAULT_PREFIX = "stek"
#: Seconds a write waits for a replica's acknowledgement (``WAIT``); shorter
#: than the socket timeout, so that Redis answers before the client gives up.
WAIT_TIMEOUT = 1.5

_QUERY = {"prefix", "db", "cacert", "cert", "key", "ssl_ca_certs", "ssl_certfile",
          "ssl_keyfile", "min_replicas", "wait_timeout", "sentinel_user", "kek_file"}
_TLS_ALIASES = {"cacert": "ssl_ca_certs", "cert": "ssl_certfile", "key": "ssl_keyfile"}


def _db(text: str, shown: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{shown}: the database must be a number, not {text!r}")
    return int(text)


def _tls_kwargs(u: StoreURL, tls: bool) -> dict[str, Any]:
    files = {_TLS_ALIASES.get(k, k): v for k, v in u.options.items()
             if k in _TLS_ALIASES or k in _TLS_ALIASES.values()}
    if not tls:
        if files:
            raise ConfigError(f"{u.display}: TLS options on a plaintext URL (use rediss://)")
        return {}
    if ("ssl_certfile" in files) != ("ssl_keyfile" in files):
        raise ConfigError(f"{u.display}: give both cert= and key= for a client certificate")
    kw: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    kw.update(files)
    if u.secret("ssl_password"):
        kw["ssl_password"] = u.secret("ssl_password")
    return kw


class RedisURL:
    """What a Redis URL asks for: where, how, and under which name."""

    def __init__(self, url: str, env: Any) -> None:
        u = parse(url, env)
        u.take(_QUERY)
        self.url = u
        shown = u.display
        self.sentinel = u.scheme.endswith("+sentinel")
        self.tls = u.scheme.startswith("rediss")
        self.prefix = u.options.get("prefix", DEFAULT_PREFIX)
        if not self.prefix:
            raise ConfigError(f"{shown}: prefix must not be empty")
        self.master = ""
        parts = [p for p in u.path.split("/") if p] if u.scheme != "unix" else []
        db_text = u.options.get("db")
        if self.sentinel:
            if not u.hosts or not parts:
                raise ConfigError(f"{shown}: use {u.scheme}://HOST:PORT[,HOST:PORT...]/MASTER/DB")
            self.master = parts.pop(0)
        elif u.scheme == "unix":
            if u.hosts or not u.path:
                raise ConfigError(f"{shown}: use unix:///PATH/TO/redis.sock?db=N")
        elif len(u.hosts) != 1:
            raise ConfigError(f"{shown}: one host per redis:// URL (several Sentinels: "
                              f"redis+sentinel://H1,H2,H3/MASTER/DB)")
        if len(parts) > 1:
            raise ConfigError(f"{shown}: the path is /DB (a number), not {u.path!r}")
        if parts and db_text is not None and parts[0] != db_text:
            raise ConfigError(f"{shown}: two databases (/{parts[0]} and db={db_text})")
        self.db = _db(parts[0] if parts else (db_text or "0"), shown)
        mr = u.options.get("min_replicas", "auto")
        if mr != "auto" and not mr.isdigit():
            raise ConfigError(f"{shown}: min_replicas is a number or 'auto'")
        self.min_replicas: int | None = None if mr == "auto" else int(mr)
        wt = u.options.get("wait_timeout")
        try:
            self.wait_timeout = WAIT_TIMEOUT if wt is None else parse_seconds(wt, "wait_timeout")
        except ConfigError as exc:
            raise ConfigError(f"{shown}: {exc}") from None
        self.identity = f"redis:{self.db}/{self.prefix}"

    def client(self, connect_timeout: float, socket_timeout: float) -> redis.Redis[bytes]:
        u = self.url
        kw: dict[str, Any] = {
            "db": self.db, "username": u.user, "password": u.password,
            "socket_connect_timeout": connect_timeout, "socket_timeout": socket_timeout,
            # One immediate retry of a failed connect, never a long stall
            # (a dead connection is replaced by the channel: _redis_channel).
            "retry": Retry(NoBackoff(), 1), "health_check_interval": 10,
            # RESP3: one connection carries the commands and the change
            # notifications alike (see _redis_channel); Redis 6 or later.
            "protocol": 3,
        }
        tls = _tls_kwargs(u, self.tls)
        if self.sentinel:
            skw: dict[str, Any] = {
                "socket_connect_timeout": connect_timeout, "socket_timeout": socket_timeout,
                "username": u.options.get("sentinel_user"),
                "password": u.secret("sentinel_password"), **tls,
            }
            sentinel = Sentinel(u.host_list(26379), sentinel_kwargs=skw, **kw, **tls)
            self.sentinels = sentinel
            return sentinel.master_for(self.master)
        if u.scheme == "unix":
            return redis.Redis(unix_socket_path=u.path, **kw)
        host, port = u.host_list(6379)[0]
        return redis.Redis(host=host, port=port, **kw, **tls)
