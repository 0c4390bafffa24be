"""A fleet keyring on Redis (redis-py).

URL: ``redis://[user:password@]host:port/db?prefix=stek`` (also ``rediss://``
for TLS, and ``unix:///path/redis.sock?db=0``).  The ring lives, sealed (see
:mod:`stek.stores.sealing`), in the string ``{prefix}:keyring``; every write
publishes on the channel ``{prefix}:changed``.

* Atomic read-modify-write, no leader: the write is a Lua script (``EVALSHA``;
  Redis runs a script atomically, https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/)
  that sets the new value only if the current one is still the value the
  mutation was computed from, and publishes in the same step.  Racing
  rotators therefore write one key per slot: the losers re-read, see the
  slot filled and plan nothing.
* Change notification: pub/sub on ``{prefix}:changed``.  Messages published
  while a subscriber is disconnected are lost, so every (re)subscription
  also notifies, and the consumer re-reads; ``install()``'s periodic re-read
  is the backstop.
* Short timeouts and a single retry, so a refresher or an agent never hangs
  on a dead server; every redis-py error becomes StoreUnavailable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigError
from .sealing import (
    AnySealer,
    SharedStore,
    WatchThread,
    options_only,
    sealer_from,
    unavailable,
)

#: Seconds: connecting, and waiting for one reply.  Loopback or LAN answers
#: in milliseconds; a refresher must fail fast and keep its snapshot.
CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 2.0
DEFAULT_PREFIX = "stek"

# KEYS[1] = the ring's key; ARGV[1] = "1" if a value was read ("0" if the key
# was absent), ARGV[2] = that value, ARGV[3] = the new value, ARGV[4] = channel.
# Returns 1 when written, 0 when another writer changed the value first.
_CAS = """
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and cur == false) or (ARGV[1] == '1' and cur == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('PUBLISH', ARGV[4], 'changed')
  return 1
end
return 0
"""

_OPTIONS = ("kek", "kek_file", "insecure_plaintext", "env", "connect_timeout", "socket_timeout")


def _redact(url: str) -> tuple[str, str, str, str]:
    """(URL without password and stek parameters, URL for redis-py, prefix, password)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    rest = []
    for k, v in query:
        if k == "prefix":
            prefix = v
        elif k == "password":
            raise ConfigError("redis URL: put the password in user:password@, not in ?password=")
        else:
            rest.append((k, v))
    if not prefix:
        raise ConfigError("redis URL: prefix must not be empty")
    password = unquote(parts.password or "")
    client_url = urlunsplit(parts._replace(query=urlencode(rest)))
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if user else hostport
    shown = [(k, v) for k, v in query if k == "prefix"] + rest
    safe = urlunsplit(parts._replace(netloc=netloc, query=urlencode(shown)))
    return safe, client_url, prefix, password


class RedisStore(SharedStore[bytes | None]):
    """A sealed keyring in one Redis string, changed by compare-and-set scripts."""

    def __init__(self, client: redis.Redis[bytes], *, url: str, prefix: str, sealer: AnySealer,
                 password: str = "") -> None:
        super().__init__(url, sealer)
        self._client = client
        # Only to scrub it from error messages (as typed in the URL, and decoded).
        self._secrets = (password, quote(password, safe="")) if password else ()
        self.key = f"{prefix}:keyring"
        self.channel = f"{prefix}:changed"
        self._cas = client.register_script(_CAS)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Open ``redis://...``; options: kek, kek_file, insecure_plaintext, timeouts."""
        options_only(options, _OPTIONS, "redis store")
        safe, client_url, prefix, password = _redact(url)
        sealer = sealer_from(
            safe, kek=options.get("kek"), kek_file=options.get("kek_file"),
            insecure_plaintext=options.get("insecure_plaintext"), env=options.get("env"),
        )
        try:
            client = redis.Redis.from_url(
                client_url,
                socket_connect_timeout=float(options.get("connect_timeout", CONNECT_TIMEOUT)),
                socket_timeout=float(options.get("socket_timeout", SOCKET_TIMEOUT)),
                # One immediate retry: enough to replace a pooled connection
                # that died with a restarted server, never a long stall.
                retry=Retry(NoBackoff(), 1),
                health_check_interval=10,
            )
        except (ValueError, redis.RedisError) as exc:
            raise ConfigError(f"bad redis URL {safe!r}: {exc}") from None
        return cls(client, url=safe, prefix=prefix, sealer=sealer, password=password)

    @property
    def ring_id(self) -> str:
        """Sealed values are bound to the database and key (not the host: see sealing.py)."""
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        return f"redis db {db} key {self.key}"

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, {self.sealer.describe})"

    def _load(self) -> tuple[bytes | None, bytes | None]:
        try:
            value = self._client.get(self.key)
        except redis.RedisError as exc:
            raise unavailable(self.url, "read", exc, *self._secrets) from exc
        if value is not None and not isinstance(value, bytes):
            value = bytes(value)
        return value, value

    def _swap(self, token: bytes | None, data: bytes) -> bool:
        args = ["0", b""] if token is None else ["1", token]
        try:
            done = self._cas(keys=[self.key], args=[*args, data, self.channel])
        except redis.RedisError as exc:
            raise unavailable(self.url, "write", exc, *self._secrets) from exc
        return bool(done)

    def _listen(self, watch: WatchThread) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        watch.on_close(pubsub.close)
        try:
            pubsub.subscribe(self.channel)
            watch.ready()
            while not watch.stop_event.is_set():
                # Returns at once when a message arrives; the timeout only
                # bounds how long close() waits for this thread.
                if pubsub.get_message(timeout=0.5) is not None:
                    watch.changed()
        finally:
            pubsub.close()

    def subscribe(self, on_change: Callable[[], None]) -> WatchThread:
        return WatchThread("stek-redis-watch", self.url, self._listen, on_change)

    def close(self) -> None:
        # Closing a dead connection is not an error.
        with contextlib.suppress(redis.RedisError):
            self._client.close()
