"""A fleet keyring on etcd v3, through etcd's JSON gateway (etcd3gw), on one or more members.

URL (grammar and credentials: :mod:`stek.stores.url`)::

    etcd://h1:2379,h2:2379,h3:2379/prefix
    etcds://h1:2379,h2:2379,h3:2379/prefix?cacert=CA.pem&cert=C.pem&key=C.key
        &user=stek&password_file=PATH

The prefix defaults to ``/stek``; the ring lives, sealed (see
:mod:`stek.stores.sealing`), under the key ``{prefix}/keyring``.

* The client: etcd3gw (one ``Etcd3Client`` per member, sharing one
  ``requests`` session that holds the TLS settings and the auth token).
  ``etcds://`` verifies the members' certificates against ``cacert`` (or
  the system's CAs) and checks the host name; ``cert``/``key`` present a
  client certificate (etcd's ``--client-cert-auth``).
* Authentication: ``/v3/auth/authenticate`` turns the user and password into
  a token sent as the ``Authorization`` header (etcd API reference,
  "Authentication"; gRPC gateway docs).  A token that etcd no longer knows
  (it expires after ``--auth-token-ttl``, 300 s by default, or a member
  restarted) is renewed once, then the request is retried.
* Several members: requests go to the member that answered last; a member
  that refuses, times out, has no leader, or answers 5xx is skipped for the
  next one, within the same request.  Any member forwards writes to the
  leader (etcd's Raft), so no client needs to know which one leads.
* Atomic read-modify-write, no leader of our own: a transaction whose guard
  is the key's ``mod_revision`` as read (``create_revision == 0`` when
  absent); etcd applies it only if no write landed in between (etcd API
  guarantees, "Transaction").  The losers re-read and plan again.
* Change notification: an etcd watch on the key, a long-lived streaming
  POST to ``/v3/watch`` read line by line (one JSON ``WatchResponse`` each;
  a line longer than :data:`MAX_WATCH_LINE` ends the stream).  The watch
  asks etcd to cancel it if its member loses the leader (gRPC metadata
  ``hasleader``, sent by the gateway from the ``Grpc-Metadata-hasleader``
  header; etcd's ``rpctypes.MetadataRequireLeaderKey``), so a watcher moves
  to a member that still has quorum instead of waiting silently.  Every
  (re)connection notifies too, so a change made while the watch was moving
  is re-read: no rotation falls in the gap.
* Short HTTP timeouts; every etcd3gw, HTTP or JSON error becomes
  StoreUnavailable, scrubbed of the password and token.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

from ..errors import ConfigError, StoreUnavailable
from .base import Endpoint, StoreHealth
from .sealing import MAX_VALUE_BYTES, AnySealer, sealer_from
from .shared import SharedStore, WatchThread, options_only, too_large, unavailable
from .url import StoreURL, parse

#: Seconds for one KV request (connect and reply), per member tried.
TIMEOUT = 2.0
#: A watch stream idle this long is re-established (and the ring re-read):
#: it bounds how long a silently dead connection goes unnoticed.
WATCH_IDLE = 60.0
#: Bytes: the longest watch line kept in memory (a ring is a few KB).
MAX_WATCH_LINE = 4 * 1024 * 1024
#: Bytes: the longest range reply taken in (a value of MAX_VALUE_BYTES, in
#: base64, and its JSON around it).  etcd refuses writes above
#: ``--max-request-bytes`` (1.5 MiB by default), which an operator may raise.
MAX_RANGE_REPLY = MAX_VALUE_BYTES * 4 // 3 + 4096
#: Bytes read from a watch stream at a time.
_READ = 65536
DEFAULT_PREFIX = "/stek"
_ERRORS = (etcd_exc.Etcd3Exception, requests.RequestException, ValueError, KeyError, TypeError)
_OPTIONS = ("kek", "kek_file", "insecure_plaintext", "env", "timeout")
_QUERY = {"cacert", "cert", "key", "kek_file"}
# Failures that say "this member cannot serve now, another may": move on.
_MOVE_ON = ("no leader", "timed out", "timeout", "not capable", "leader changed", "stopped",
            "too many requests", "unhealthy")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _detail(exc: BaseException) -> str:
    """One short line: etcd's own error text, or the TLS failure's reason."""
    text = str(exc.detail_text or exc) if isinstance(exc, etcd_exc.Etcd3Exception) else str(exc)
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        text = str(json.loads(text).get("error") or text)
    if "SSLError" in text or "SSL" in type(exc).__name__:
        return "TLS handshake failed (" + _ssl_reason(text) + ")"
    if "CommonName of client" in text:  # etcd embed/serve.go, auth + client-cert-auth
        return ("etcd's gateway refuses a client certificate with a Common Name while auth "
                "is on: issue stek's client certificate without a CN")
    if "Max retries exceeded" in text:  # urllib3's long wrapper: keep the cause
        text = text.rpartition(": ")[2].rstrip("')\"")
    return text


def _ssl_reason(text: str) -> str:
    low = text.lower()
    for reason in ("certificate verify failed", "certificate required", "unknown ca",
                   "bad certificate", "hostname mismatch", "doesn't match", "wrong version",
                   "unexpected eof", "connection reset"):
        if reason in low:
            return reason
    return "see the member's log"


def _auth_expired(exc: BaseException) -> bool:
    return isinstance(exc, etcd_exc.Etcd3Exception) and "invalid auth token" in _detail(exc)


def _member_down(exc: BaseException) -> bool:
    if isinstance(exc, (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                        etcd_exc.InternalServerError, requests.ConnectionError,
                        requests.Timeout)) and not isinstance(exc, requests.exceptions.SSLError):
        return True
    return any(m in _detail(exc).lower() for m in _MOVE_ON)


class _Members:
    """etcd3gw clients for each member, a shared session, and the auth token."""

    def __init__(self, u: StoreURL, timeout: float) -> None:
        self.url = u
        self.timeout = timeout
        self.tls = u.scheme == "etcds"
        self.user = u.user
        if u.password and not u.user:
            raise ConfigError(f"{u.display}: a password needs a user (?user=NAME)")
        if u.user and not u.password:
            raise ConfigError(f"{u.display}: user {u.user!r} needs a password "
                              f"(password_file=PATH or $STEK_STORE_PASSWORD)")
        cacert, cert, key = (u.options.get(k) for k in ("cacert", "cert", "key"))
        if not self.tls and (cacert or cert or key):
            raise ConfigError(f"{u.display}: TLS options on a plaintext URL (use etcds://)")
        if bool(cert) != bool(key):
            raise ConfigError(f"{u.display}: give both cert= and key= for a client certificate")
        for opt, path in (("cacert", cacert), ("cert", cert), ("key", key)):
            # requests loads them only at the first request, with an OSError
            # outside its RequestException family (requests/adapters.py cert_verify).
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"{u.display}: cannot read the {opt}= file {path!r}")
        self.session = requests.Session()
        # $REQUESTS_CA_BUNDLE would silently replace cacert=, and ~/.netrc
        # could add credentials: the URL alone says how to reach the store.
        self.session.trust_env = False
        if self.tls:
            self.session.verify = cacert or True
            if cert and key:
                self.session.cert = (cert, key)
        self.clients = [
            etcd3gw.Etcd3Client(host=h, port=p, protocol="https" if self.tls else "http",
                                timeout=timeout, session=self.session)
            for h, p in u.host_list(2379)
        ]
        self.names = [f"{h}:{p}" for h, p in u.host_list(2379)]
        self.current = 0
        self._lock = threading.Lock()
        self._token: str | None = None

    def secrets(self) -> tuple[str, ...]:
        return (*self.url.all_secrets(), *((self._token,) if self._token else ()))

    def authenticate(self, client: etcd3gw.Etcd3Client) -> None:
        """Exchange user and password for a token (etcd: POST /v3/auth/authenticate)."""
        if not self.user:
            return
        self.session.headers.pop("Authorization", None)
        resp = client.post(client.get_url("/auth/authenticate"),
                           json={"name": self.user, "password": self.url.password})
        token = resp.get("token") if isinstance(resp, dict) else None
        if not token:
            raise etcd_exc.Etcd3Exception("authenticate answered no token")
        with self._lock:
            self._token = str(token)
            self.session.headers["Authorization"] = self._token

    def ensure_auth(self, client: etcd3gw.Etcd3Client) -> None:
        if self.user and self._token is None:
            self.authenticate(client)

    def order(self) -> list[int]:
        """Member indexes, the last one that answered first."""
        n = len(self.clients)
        return [(self.current + i) % n for i in range(n)]


class EtcdStore(SharedStore[int]):
    """A sealed keyring under one etcd key, changed by revision-guarded transactions."""

    def __init__(self, members: _Members, *, url: str, key: str,
                 sealer: AnySealer, timeout: float = TIMEOUT) -> None:
        super().__init__(url, sealer)
        self._members = members
        self._pid = os.getpid()
        self._timeout = timeout
        self.key = key
        #: Stable name of the ring: engine and key (no host, no credential).
        self.identity = f"etcd:{key}"
        self._key64 = _b64(key.encode())
        self._watch_member = 0

    @property
    def _m(self) -> _Members:
        """The members' clients, made anew in a forked child.

        After ``fork()`` the child holds the parent's pooled keep-alive
        connections: a request from each on one connection takes whichever
        reply comes first (crossed replies, a compare-and-set reported for
        another process's write).  The child gets its own session; the
        inherited one is dropped, never closed or shut down, so nothing is
        sent on the parent's connections (closing a descriptor in the child
        leaves the parent's open).  Its lock may have been held at fork time:
        it is not reused either.
        """
        if self._pid != os.getpid():
            old = self._members
            self._members = _Members(old.url, old.timeout)
            self._pid = os.getpid()
        return self._members

    @property
    def _client(self) -> etcd3gw.Etcd3Client:
        """The member requests go to now."""
        return self._m.clients[self._m.current]

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdStore:
        """Open ``etcd[s]://HOSTS/prefix``; options: kek, kek_file, insecure_plaintext, timeout."""
        options_only(options, _OPTIONS, "etcd store")
        u = parse(url, options.get("env"))
        u.take(_QUERY)
        if not u.hosts:
            raise ConfigError(f"{u.display}: no host (use etcd://HOST:PORT[,HOST:PORT...]/PREFIX)")
        prefix = u.path.rstrip("/") or DEFAULT_PREFIX
        u = StoreURL(u.scheme, u.hosts, prefix, u.options, u.user, u.password, u.secrets)
        safe = u.display
        sealer = sealer_from(
            safe, kek=options.get("kek"),
            kek_file=options.get("kek_file") or u.options.get("kek_file"),
            insecure_plaintext=options.get("insecure_plaintext"), env=options.get("env"),
        )
        timeout = float(options.get("timeout", TIMEOUT))
        return cls(_Members(u, timeout), url=safe, key=f"{prefix}/keyring", sealer=sealer,
                   timeout=timeout)

    @property
    def ring_id(self) -> str:
        """Sealed values are bound to the key (not the host: see sealing.py)."""
        return f"etcd key {self.key}"

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r}, {self.sealer.describe})"

    def _fail(self, action: str, exc: BaseException, member: str = "") -> StoreUnavailable:
        where = f" (member {member})" if member else ""
        return unavailable(self.url, action + where, exc, *self._m.secrets(),
                           detail=_detail(exc))

    def _post(self, path: str, body: dict[str, Any], action: str,
              **kw: Any) -> dict[str, Any]:
        """POST to the current member; on a member failure, to the next ones."""
        last: BaseException | None = None
        last_member = ""
        for i in self._m.order():
            client = self._m.clients[i]
            try:
                resp = self._post_one(client, path, body, **kw)
            except _ERRORS as exc:
                last, last_member = exc, self._m.names[i]
                if _member_down(exc):
                    continue
                raise self._fail(action, exc, last_member) from exc
            self._m.current = i
            return resp
        assert last is not None
        raise self._fail(action, last, last_member if len(self._m.names) == 1 else "all members")

    def _post_one(self, client: etcd3gw.Etcd3Client, path: str,
                  body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self._m.ensure_auth(client)
        try:
            resp = client.post(client.get_url(path), json=body, **kw)
        except etcd_exc.Etcd3Exception as exc:
            if not _auth_expired(exc):
                raise
            self._m.authenticate(client)  # renew the token once, then retry
            resp = client.post(client.get_url(path), json=body, **kw)
        if not isinstance(resp, dict):
            raise TypeError("etcd answered something other than a JSON object")
        return resp

    def _load(self) -> tuple[bytes | None, int]:
        resp = self._post("/kv/range", {"key": self._key64}, "read", stream=True,
                          hooks={"response": self._bounded})
        kvs = resp.get("kvs") or []
        if not kvs:
            return None, 0
        try:
            # The gateway renders int64 as JSON strings, and omits zero values.
            value = base64.b64decode(kvs[0].get("value", ""), validate=True)
            revision = int(kvs[0]["mod_revision"])
        except (KeyError, ValueError, binascii.Error) as exc:
            raise unavailable(self.url, "read", exc, detail="malformed range reply") from exc
        if len(value) > MAX_VALUE_BYTES:
            raise too_large(self.url, len(value))
        return value, revision

    def _bounded(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        """A response hook: take in at most MAX_RANGE_REPLY bytes of a streamed reply.

        Consuming the body to its end hands the connection back to the pool
        (requests: "Body Content Workflow"); a longer one closes it unread.
        """
        body, size = [], 0
        for chunk in resp.iter_content(_READ):
            size += len(chunk)
            if size > MAX_RANGE_REPLY:
                resp.close()
                raise too_large(self.url)
            body.append(chunk)
        resp._content = b"".join(body)  # what resp.json() then parses

    def _swap(self, token: int, data: bytes) -> bool:
        guard: dict[str, Any] = (
            {"key": self._key64, "target": "CREATE", "result": "EQUAL", "create_revision": 0}
            if token == 0 else
            {"key": self._key64, "target": "MOD", "result": "EQUAL", "mod_revision": token}
        )
        txn = {
            "compare": [guard],
            "success": [{"request_put": {"key": self._key64, "value": _b64(data)}}],
            "failure": [],
        }
        # A member that times out may still have applied the transaction: the
        # retry on the next member then fails its guard, re-reads, and finds
        # the slot filled, so no slot ever gets two keys.
        resp = self._post("/kv/txn", txn, "write")
        # A failed compare leaves out "succeeded" (proto3 JSON omits false).
        return bool(resp.get("succeeded", False))

    def _listen(self, watch: WatchThread) -> None:
        n = len(self._m.clients)
        # After a lost watch, start from the next member (the one that answered requests first).
        i = self._watch_member % n
        if watch.reconnects:
            i = (i + 1) % n if i == self._m.current else self._m.current
        self._watch_member = i
        client = self._m.clients[i]
        session = requests.Session()
        session.trust_env = False
        session.verify = self._m.session.verify
        session.cert = self._m.session.cert
        watch.on_close(session.close)
        try:
            self._m.ensure_auth(client)
            session.headers.update(self._m.session.headers)
            session.headers["Grpc-Metadata-hasleader"] = "true"
            resp = session.post(
                client.get_url("/watch"), json={"create_request": {"key": self._key64}},
                stream=True, timeout=(self._timeout, WATCH_IDLE),
            )
            watch.on_close(lambda: _shutdown(resp))
            if resp.status_code != 200:
                raise etcd_exc.Etcd3Exception(f"watch answered HTTP {resp.status_code}")
            for line in _lines(resp):
                if watch.stop_event.is_set():
                    return
                doc = json.loads(line)
                if "error" in doc:
                    err = str(doc["error"].get("message", "")) if isinstance(
                        doc["error"], dict) else str(doc["error"])
                    if "invalid auth token" in err:
                        self._m.authenticate(client)
                    raise etcd_exc.Etcd3Exception("watch ended by etcd")
                result = doc.get("result", {})
                if result.get("canceled"):
                    # A watch etcd will not create comes back "created" *and*
                    # "canceled" (watch_id -1; etcd 3.4 api/v3rpc/watch.go
                    # recvLoop), e.g. for a token it has expired: renew it, or
                    # the stream would sit silent.
                    reason = str(result.get("cancel_reason", ""))
                    if "invalid auth token" in reason:
                        self._m.authenticate(client)
                    raise etcd_exc.Etcd3Exception(f"watch canceled by etcd ({reason})")
                if result.get("created"):
                    watch.ready()
                elif result.get("events"):
                    watch.changed()
        except requests.exceptions.ConnectionError as exc:
            # An idle stream past WATCH_IDLE: reconnect quietly.
            if "Read timed out" not in str(exc):
                raise
        finally:
            session.close()

    def subscribe(self, on_change: Callable[[], None]) -> WatchThread:
        return WatchThread("stek-etcd-watch", self.url, self._listen, on_change)

    def health(self) -> StoreHealth:
        """Each member: reachable or not, leader or follower (``/v3/maintenance/status``)."""
        eps: list[Endpoint] = []
        leader: str | None = None
        for client, name in zip(self._m.clients, self._m.names, strict=True):
            try:
                st = self._post_one(client, "/maintenance/status", {})
                me, lead = st.get("header", {}).get("member_id"), st.get("leader")
                role = "leader" if me and me == lead else ("follower" if lead else "no leader")
                if role == "leader":
                    leader = name
                eps.append(Endpoint(name, True, role))
            except _ERRORS as exc:
                eps.append(Endpoint(name, False, "", self._fail("reach", exc).args[0]))
        return StoreHealth("etcd", self.identity, self._m.tls, self._m.user, tuple(eps), leader)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._m.session.close()


def _chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, never more than :data:`_READ` bytes at a time.

    etcd's gateway streams a watch with chunked transfer coding (one
    WatchResponse per chunk), and urllib3 hands each chunk over as soon as it
    is read.  A body that is not chunked (an HTTP/1.0 proxy, a body delimited
    by closing the connection) is read with ``read1``: what one receive
    returns.  ``iter_content(chunk_size=None)`` would read it to its end,
    holding all of it and seeing no event until the connection closes.
    """
    raw = resp.raw
    if getattr(raw, "chunked", False) or not hasattr(raw, "read1"):
        # urllib3 < 2.3 has no read1: bounded still, events wait for _READ bytes.
        yield from resp.iter_content(chunk_size=_READ)
        return
    while data := raw.read1(_READ):
        yield data


def _lines(resp: requests.Response) -> Iterator[bytes]:
    """Lines of a streamed body as they arrive; a line over MAX_WATCH_LINE raises."""
    buf = b""
    for chunk in _chunks(resp):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from (ln for ln in lines if ln.strip())
        if len(buf) > MAX_WATCH_LINE:
            raise etcd_exc.Etcd3Exception(f"watch line longer than {MAX_WATCH_LINE} bytes")


def _shutdown(resp: requests.Response) -> None:
    """Wake a thread blocked reading the watch stream (closing alone does not)."""
    fd = resp.raw.fileno()
    s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a dup of the fd
    try:
        s.shutdown(socket.SHUT_RDWR)
    finally:
        s.close()
