"""A fleet keyring on Redis (redis-py), alone, over TLS or behind Sentinel.

URLs (grammar and credentials: :mod:`stek.stores.url`):

* ``redis://[user@]host:port/DB?prefix=stek&password_file=PATH``;
* ``rediss://...?cacert=CA.pem&cert=CLIENT.pem&key=CLIENT.key`` (TLS; the
  server's name is checked against its certificate; redis-py's own
  ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` are accepted too);
* ``unix:///path/redis.sock?db=0``;
* ``redis+sentinel://h1:26379,h2:26379,h3:26379/MASTER/DB?prefix=...
  &password_file=...&sentinel_password_file=...`` (``rediss+sentinel://``:
  TLS to the Sentinels and to the data nodes alike).

The ring lives, sealed (see :mod:`stek.stores.sealing`), in the string
``{prefix}:keyring``; every write is announced on the channel ``{prefix}:changed``.

* Atomic read-modify-write, no leader: the write is a Lua script (``EVALSHA``;
  Redis runs a script atomically, https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/)
  that sets the new value only if the current one is still the value the
  mutation was computed from.  Racing rotators therefore write one key per
  slot: the losers re-read, see the slot filled and plan nothing.
* Durability across a failover: Redis replicates asynchronously, so a write
  acknowledged by a primary that dies before replicating is lost
  (https://redis.io/docs/latest/operate/oss_and_stack/management/replication/).
  A write counts only once ``WAIT``, on the connection that wrote, reports it
  on at least one replica (``min_replicas=``, by default 1 when the primary
  has replicas connected, 0 when it has none); only then is the change
  announced.  A write no replica acknowledges within ``wait_timeout`` is
  reported as failed (StoreUnavailable) but stays on the primary, where
  servers' periodic reads may find it; so a rotation pass that finds a value
  it has not seen acknowledged confirms it (writes it again, unchanged, and
  waits) or fails, and no writer writes on top of an unacknowledged value.
  At most one generation is then ever unreplicated, and a failover loses at
  most that one: the rotator that finds the ring back at the last value it
  saw acknowledged re-issues it above the lost generation (see
  :meth:`RedisStore.update`), which readers holding the lost one admit.
* One connection per store object (RESP3, so Redis 6 or later): reads,
  writes and the change notifications share it (see :mod:`._redis_channel`),
  and a fleet of hosts is one client per host on the store.
* Change notification: pub/sub on ``{prefix}:changed``.  Messages published
  while a subscriber is disconnected are lost, so every (re)subscription
  also notifies, and the consumer re-reads; ``install()``'s periodic re-read
  is the backstop.  Under Sentinel, every new connection asks the Sentinels
  for the current primary, so a watcher follows a failover when it reconnects.
* Short timeouts and a single retry, so a refresher or an agent never hangs
  on a dead server; every redis-py error becomes StoreUnavailable, scrubbed
  of every credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..errors import ConfigError, SealingError, StoreUnavailable
from ..keyring import Keyring
from ._redis_channel import Channel
from .base import Endpoint, Mutator, StoreHealth
from .sealing import MAX_VALUE_BYTES, AnySealer, sealer_from
from .shared import SharedStore, WatchThread, options_only, too_large, unavailable
from .url import StoreURL, parse

#: Seconds: connecting, and waiting for one reply.  Loopback or LAN answers
#: in milliseconds; a refresher must fail fast and keep its snapshot.
CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 2.0
DEFAULT_PREFIX = "stek"
#: Seconds a write waits for a replica's acknowledgement (``WAIT``); shorter
#: than SOCKET_TIMEOUT, so that Redis answers before the client gives up.
WAIT_TIMEOUT = 1.5

log = logging.getLogger("stek.store")

# KEYS[1] = the ring's key; ARGV[1] = "1" if a value was read ("0" if the key
# was absent or empty), ARGV[2] = that value, ARGV[3] = the new value,
# ARGV[4] = MAX_VALUE_BYTES: a larger value is not even copied into the
# script (it cannot equal one read, which _load bounds).
# Returns 1 when written, 0 when another writer changed the value first.
_CAS = """
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[4]) then
  return 0
end
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and (cur == false or cur == '')) or (ARGV[1] == '1' and cur == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
_CAS_SHA = hashlib.sha1(_CAS.encode()).hexdigest()  # noqa: S324 - the script's name in Redis


_OPTIONS = ("kek", "kek_file", "insecure_plaintext", "env", "connect_timeout", "socket_timeout")
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


class _Link:
    """The store's connection, held by one thread: a write, ``ROLE`` and ``WAIT`` all on it.

    ``WAIT`` counts the replicas that acknowledged the writes *of the
    connection it runs on* (https://redis.io/docs/latest/commands/wait/).
    The store has one connection (:mod:`._redis_channel`), held for the
    whole sequence so that no other thread's command comes between; and the
    sequence never goes through redis-py's retry: a reconnection between a
    write and its ``WAIT`` would leave ``WAIT`` on another connection.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def call(self, *args: Any) -> Any:
        # No health check either: its PING may reconnect the socket.
        self.conn.send_command(*args, check_health=False)
        return self.conn.read_response()

    def cas(self, key: str, *args: Any) -> bool:
        args = (*args, MAX_VALUE_BYTES)
        try:
            done = self.call("EVALSHA", _CAS_SHA, 1, key, *args)
        except redis.exceptions.NoScriptError:
            done = self.call("EVAL", _CAS, 1, key, *args)  # loads it, for the next EVALSHA
        return bool(done)


class _LostWrites(SealingError):
    """The ring is back at the last value a replica acknowledged, below a generation seen."""

    def __init__(self, url: str, generation: int, seen: int) -> None:
        super().__init__(f"{url}: holds keyring generation {generation}, older than generation "
                         f"{seen} already seen: refusing a rolled-back (replayed) ring")
        self.generation = generation
        self.seen = seen


class _Parsed:
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
        try:
            self.wait_timeout = float(u.options.get("wait_timeout", WAIT_TIMEOUT))
        except ValueError:
            raise ConfigError(f"{shown}: wait_timeout is a number of seconds") from None
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


#: Distinct keys for the watches of a process (a channel may carry several).
_WATCHES = itertools.count()


class RedisStore(SharedStore[bytes | None]):
    """A sealed keyring in one Redis string, changed by compare-and-set scripts."""

    def __init__(self, client: redis.Redis[bytes], *, url: str, prefix: str, sealer: AnySealer,
                 secrets: tuple[str, ...] = (), parsed: _Parsed | None = None) -> None:
        super().__init__(url, sealer)
        self._client = client
        #: The one connection every command and watch of this object uses.
        self._chan = Channel(client.connection_pool)
        # Only to scrub them from foreign error messages (as typed and encoded).
        self._secrets = secrets
        self._parsed = parsed
        self.key = f"{prefix}:keyring"
        self.channel = f"{prefix}:changed"
        #: Stable name of the ring: engine, database and prefix (no host, no credential).
        self.identity = parsed.identity if parsed else f"redis:0/{prefix}"
        #: The last value this object saw a replica acknowledge (WAIT), and the
        #: last one it needs not confirm again (acknowledged, or written or read
        #: while the primary had no replica to wait for).
        self._confirmed: bytes | None = None
        self._settled: bytes | None = None
        #: Rings re-issued after a failover lost writes no replica had acknowledged.
        self.lost_writes_reissued = 0
        self._local = threading.local()  # this thread's last value read; whether it wrote

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Open a Redis URL; options: kek, kek_file, insecure_plaintext, timeouts."""
        options_only(options, _OPTIONS, "redis store")
        p = _Parsed(url, options.get("env"))
        safe = p.url.display
        sealer = sealer_from(
            safe, kek=options.get("kek"),
            kek_file=options.get("kek_file") or p.url.options.get("kek_file"),
            insecure_plaintext=options.get("insecure_plaintext"), env=options.get("env"),
        )
        try:
            socket_timeout = float(options.get("socket_timeout", SOCKET_TIMEOUT))
            client = p.client(float(options.get("connect_timeout", CONNECT_TIMEOUT)),
                              socket_timeout)
        except (ValueError, TypeError, redis.RedisError) as exc:
            raise ConfigError(f"bad redis URL {safe!r}: {type(exc).__name__}") from None
        if p.wait_timeout >= socket_timeout:
            raise ConfigError(f"{safe}: wait_timeout must be shorter than the socket timeout "
                              f"({socket_timeout:g}s), or the reply to WAIT is not waited for")
        return cls(client, url=safe, prefix=p.prefix, sealer=sealer,
                   secrets=p.url.all_secrets(), parsed=p)

    @property
    def ring_id(self) -> str:
        """Sealed values are bound to the database and key (not the host: see sealing.py)."""
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        return f"redis db {db} key {self.key}"

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, {self.sealer.describe})"

    def _fail(self, action: str, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, redis.ResponseError) and "HELLO" in str(exc):
            return unavailable(self.url, action, exc, detail=(
                "the server does not know HELLO, so it cannot speak RESP3: stek needs "
                "Redis 6 or later"))
        return unavailable(self.url, action, exc, *self._secrets)

    def _load(self) -> tuple[bytes | None, bytes | None]:
        # The size first, then at most one byte more than a value may hold
        # (GETRANGE's end is inclusive): a huge value is never transferred.
        # An absent key and an empty value read alike (b""): neither is a ring.
        try:
            size = int(self._chan.call("STRLEN", self.key))
            if size > MAX_VALUE_BYTES:
                raise too_large(self.url, size)
            value = bytes(self._chan.call("GETRANGE", self.key, 0, MAX_VALUE_BYTES)) or None
        except redis.RedisError as exc:
            raise self._fail("read", exc) from exc
        if value is not None and len(value) > MAX_VALUE_BYTES:  # grew in between
            raise too_large(self.url)
        self._local.loaded = value
        return value, value

    @contextlib.contextmanager
    def _link(self) -> Iterator[_Link]:
        with self._chan.hold() as conn:
            yield _Link(conn)

    def _swap(self, token: bytes | None, data: bytes) -> bool:
        args = ["0", b""] if token is None else ["1", token]
        try:
            with self._link() as link:
                need = self._need(link)
                if need and token is not None and token != self._settled:
                    # Never write on top of a value no replica holds: a failover
                    # then loses at most one generation (see update()).
                    if not link.cas(self.key, "1", token, token):
                        return False
                    self._wait(link, need, token, "the ring it would replace is")
                if not link.cas(self.key, *args, data):
                    return False
                self._wait(link, need, data, "the write is")
        except redis.RedisError as exc:
            raise self._fail("write", exc) from exc
        self._local.wrote = True
        # Announced only once durable: a watcher never loads a key a failover could lose.
        try:
            self._chan.call("PUBLISH", self.channel, "changed")
        except redis.RedisError as exc:
            log.warning("%s: written, but the change notification failed (%s); watchers "
                        "see it at their next periodic read", self.url, type(exc).__name__)
        return True

    def _need(self, link: _Link) -> int:
        """Replicas a write must reach: ``min_replicas``, or (auto) 1 if the primary has one."""
        p = self._parsed
        if p and p.min_replicas is not None:
            return p.min_replicas
        role = link.call("ROLE")
        return 1 if role and role[0] in (b"master", "master") and role[2] else 0

    def _wait(self, link: _Link, need: int, value: bytes, what: str) -> None:
        """Until the link's writes (``value``) are on ``need`` replicas (``WAIT``), or raise."""
        if need:
            timeout = self._parsed.wait_timeout if self._parsed else WAIT_TIMEOUT
            got = int(link.call("WAIT", need, int(timeout * 1000)))
            if got < need:
                raise StoreUnavailable(
                    f"{self.url}: {got} of {need} replica(s) acknowledged within {timeout:g}s: "
                    f"{what} not on a replica and may be lost in a failover, so it does not "
                    f"count")
            self._confirmed = value
        self._settled = value

    def update(self, mutate: Mutator) -> Keyring:
        """:meth:`SharedStore.update`, counted only once its result is on a replica.

        * A pass that changes nothing confirms the value it read (it writes it
          again, unchanged, and waits for a replica), once per value: a write
          whose ``WAIT`` failed stays on the primary, and seen there it must
          not count either.
        * After a failover that lost the one generation no replica had
          acknowledged, the ring is back at the last value this object saw a
          replica acknowledge, older than a generation seen: that value is
          re-issued unchanged at a generation above any that was lost, which
          every reader admits, and the pass goes on from it.
        """
        self._local.updating, self._local.wrote = True, False
        try:
            try:
                ring = super().update(mutate)
            except _LostWrites as lost:
                self._reissue(lost)
                ring = super().update(mutate)
            loaded = getattr(self._local, "loaded", None)
            if not self._local.wrote and loaded is not None and loaded != self._settled:
                self._confirm(loaded)
            return ring
        finally:
            self._local.updating = False

    def _admit(self, generation: int, floor: int) -> None:
        if generation < floor and getattr(self._local, "updating", False) and \
                self._confirmed is not None and self._local.loaded == self._confirmed:
            raise _LostWrites(self.url, generation, max(floor, self.seen_generation))
        super()._admit(generation, floor)

    def _confirm(self, value: bytes) -> None:
        try:
            with self._link() as link:
                need = self._need(link)
                # Changed meanwhile: its writer waits for its own write.
                if need and not link.cas(self.key, "1", value, value):
                    return
                self._wait(link, need, value, "the ring read is")
        except redis.RedisError as exc:
            raise self._fail("confirm", exc) from exc

    def _reissue(self, lost: _LostWrites) -> None:
        blob = self._confirmed
        if blob is None:
            raise lost
        plain, _ = self.sealer.open(blob, self.url, self.ring_id)
        ring = Keyring.from_bytes(plain, self.url)
        # At most one generation above the last acknowledged one can have
        # been written (_swap confirms before it writes), so one above both
        # that and anything seen is above every generation lost.
        generation = max(lost.seen, ring.generation + 1) + 1
        log.warning(
            "%s: the ring is back at generation %d, the last one a replica acknowledged, "
            "older than generation %d seen: a failover lost writes no replica had "
            "acknowledged; re-issuing generation %d with the same keys, so that readers "
            "holding a lost key drop it", self.url, ring.generation, lost.seen, generation)
        again = Keyring(ring.policy, ring.keys, generation)
        if self._swap(blob, self.sealer.seal(again.to_bytes(), self.ring_id, generation)):
            self._note(generation)
            self.lost_writes_reissued += 1

    def _listen(self, watch: WatchThread) -> None:
        key = next(_WATCHES)
        epoch = self._chan.subscribe(self.channel, key, watch.changed)
        watch.on_close(lambda: self._chan.unsubscribe(self.channel, key, epoch))
        try:
            watch.ready()
            # Returns at once when a message arrives; the timeout only bounds
            # how long close() waits for this thread.  Ends when another
            # thread replaced the connection: subscribe on the new one.
            while not watch.stop_event.is_set() and self._chan.pump(epoch, 0.5):
                pass
        finally:
            self._chan.unsubscribe(self.channel, key, epoch)

    def subscribe(self, on_change: Callable[[], None]) -> WatchThread:
        return WatchThread("stek-redis-watch", self.url, self._listen, on_change)

    def health(self) -> StoreHealth:
        """Reachability and role of each server (Sentinels and the primary they name)."""
        p = self._parsed
        tls = bool(p and p.tls)
        user = None
        if p and (p.url.user or p.url.password):
            user = p.url.user or "default"
        eps: list[Endpoint] = []
        primary: str | None = None
        replicas: int | None = None
        if p and p.sentinel:
            for node, (host, port) in zip(p.sentinels.sentinels, p.url.host_list(26379),
                                          strict=True):
                eps.append(self._probe(node, f"{host}:{port}", "sentinel"))
            try:
                mhost, mport = p.sentinels.discover_master(p.master)
                primary = f"{mhost}:{mport}"
            except redis.RedisError as exc:
                eps.append(Endpoint(f"master {p.master}", False, "primary",
                                    self._fail("reach", exc).args[0]))
        try:
            role = self._chan.call("ROLE")
            name = role[0].decode() if isinstance(role[0], bytes) else str(role[0])
            if name == "master":
                replicas = len(role[2])
            where = self._address()
            if primary is None and name == "master":
                primary = where
            eps.append(Endpoint(where, True, "primary" if name == "master" else "replica"))
        except redis.RedisError as exc:
            eps.append(Endpoint(self._address(), False, "", self._fail("reach", exc).args[0]))
        engine = "redis+sentinel" if p and p.sentinel else "redis"
        return StoreHealth(engine, self.identity, tls, user, tuple(eps), primary, replicas)

    def _address(self) -> str:
        p = self._parsed
        if p and p.sentinel:
            return "primary"
        if p and p.url.scheme == "unix":
            return p.url.path
        return ",".join(f"{h}:{port}" for h, port in (p.url.host_list(6379) if p else []))

    def _probe(self, node: redis.Redis[bytes], address: str, role: str) -> Endpoint:
        try:
            node.ping()
            return Endpoint(address, True, role)
        except redis.RedisError as exc:
            return Endpoint(address, False, role, self._fail("reach", exc).args[0])

    def close(self) -> None:
        # Closing a dead connection is not an error.
        with contextlib.suppress(redis.RedisError):
            self._chan.close()
            self._client.close()
        p = self._parsed
        if p and p.sentinel:
            for node in p.sentinels.sentinels:
                with contextlib.suppress(redis.RedisError):
                    node.close()
