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

The URL-to-client step is :mod:`._redis_client`, the compare-and-set script
:mod:`._redis_cas`, ``WAIT`` and what replicas acknowledged
:mod:`._redis_durability`; this module is the store that puts them together.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import redis

from ..errors import ConfigError, StoreUnavailable
from ..keyring import Keyring
from ._redis_cas import Link
from ._redis_channel import Channel
from ._redis_client import DEFAULT_PREFIX as DEFAULT_PREFIX
from ._redis_client import WAIT_TIMEOUT as WAIT_TIMEOUT
from ._redis_client import RedisURL
from ._redis_durability import Durability, LostWrites
from .base import Endpoint, Mutator, StoreHealth
from .sealing import MAX_VALUE_BYTES, AnySealer, sealer_from
from .shared import SharedStore, WatchThread, options_only, too_large, unavailable

#: Seconds: connecting, and waiting for one reply.  Loopback or LAN answers
#: in milliseconds; a refresher must fail fast and keep its snapshot.
CONNECT_TIMEOUT = 1.0
SOCKET_TIMEOUT = 2.0

log = logging.getLogger("stek.store")


_OPTIONS = ("kek", "kek_file", "insecure_plaintext", "env", "connect_timeout", "socket_timeout")


#: Distinct keys for the watches of a process (a channel may carry several).
_WATCHES = itertools.count()


class RedisStore(SharedStore[bytes | None]):
    """A sealed keyring in one Redis string, changed by compare-and-set scripts."""

    def __init__(self, client: redis.Redis[bytes], *, url: str, prefix: str, sealer: AnySealer,
                 secrets: tuple[str, ...] = (), parsed: RedisURL | None = None) -> None:
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
        self._durable = Durability(url, parsed.min_replicas if parsed else None,
                                   parsed.wait_timeout if parsed else WAIT_TIMEOUT)
        #: Rings re-issued after a failover lost writes no replica had acknowledged.
        self.lost_writes_reissued = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """Open a Redis URL; options: kek, kek_file, insecure_plaintext, timeouts."""
        options_only(options, _OPTIONS, "redis store")
        p = RedisURL(url, options.get("env"))
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
        return value, value

    @contextlib.contextmanager
    def _link(self) -> Iterator[Link]:
        with self._chan.hold() as conn:
            yield Link(conn)

    def _swap(self, token: bytes | None, data: bytes) -> bool:
        args = ["0", b""] if token is None else ["1", token]
        try:
            with self._link() as link:
                need = self._durable.need(link)
                if need and token is not None and token != self._durable.settled:
                    # Never write on top of a value no replica holds: a failover
                    # then loses at most one generation (see update()).
                    if not link.cas(self.key, "1", token, token):
                        return False
                    self._durable.wait(link, need, token, "the ring it would replace is")
                if not link.cas(self.key, *args, data):
                    return False
                self._durable.wait(link, need, data, "the write is")
        except redis.RedisError as exc:
            raise self._fail("write", exc) from exc
        # Announced only once durable: a watcher never loads a key a failover could lose.
        try:
            self._chan.call("PUBLISH", self.channel, "changed")
        except redis.RedisError as exc:
            log.warning("%s: written, but the change notification failed (%s); watchers "
                        "see it at their next periodic read", self.url, type(exc).__name__)
        return True

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
        reissued = False
        try:
            done = self._update(mutate)
        except LostWrites as lost:
            reissued = self._reissue(lost)
            try:
                done = self._update(mutate)
            except LostWrites as again:
                raise again.error() from None
        if not (done.wrote or reissued) and done.loaded is not None and \
                done.loaded != self._durable.settled:
            self._confirm(done.loaded)
        return done.ring

    def _admit(self, generation: int, floor: int, loaded: bytes | None = None) -> None:
        if generation < floor and loaded is not None and loaded == self._durable.confirmed:
            raise LostWrites(self.url, generation, max(floor, self.seen_generation))
        super()._admit(generation, floor, loaded)

    def _confirm(self, value: bytes) -> None:
        try:
            with self._link() as link:
                need = self._durable.need(link)
                # Changed meanwhile: its writer waits for its own write.
                if need and not link.cas(self.key, "1", value, value):
                    return
                self._durable.wait(link, need, value, "the ring read is")
        except redis.RedisError as exc:
            raise self._fail("confirm", exc) from exc

    def _reissue(self, lost: LostWrites) -> bool:
        """Write the last acknowledged ring again above every generation lost; True if written."""
        blob = self._durable.confirmed
        if blob is None:
            raise lost.error()
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
            return True
        return False

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
