"""A fleet keyring on etcd v3, through etcd's JSON gateway (etcd3gw).

URL: ``etcd://host:port/prefix`` (prefix defaults to ``/stek``).  The ring
lives, sealed (see :mod:`stek.stores.sealing`), under the key
``{prefix}/keyring``.

* The gateway path: etcd 3.4 serves both ``/v3/`` and the deprecated
  ``/v3beta/``; 3.5 dropped ``/v3beta/``.  etcd3gw asks ``/version`` once and
  picks ``/v3/`` for 3.4 and later (``/v3beta/`` for 3.3).
* Atomic read-modify-write, no leader: a transaction whose guard is the
  key's ``mod_revision`` as read (``create_revision == 0`` when absent);
  etcd applies it only if no write landed in between (etcd API guarantees,
  "Transaction").  The losers re-read and plan again.
* Change notification: an etcd watch on the key, a long-lived streaming
  POST to ``/v3/watch`` read line by line (one JSON ``WatchResponse`` each).
  Every (re)connection notifies too, so a change made while the watch was
  down is re-read.
* Short HTTP timeouts; every etcd3gw, HTTP or JSON error becomes StoreUnavailable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

from ..errors import ConfigError
from .sealing import (
    AnySealer,
    SharedStore,
    WatchThread,
    options_only,
    sealer_from,
    unavailable,
)

#: Seconds for one KV request (connect and reply).
TIMEOUT = 2.0
#: A watch stream idle this long is re-established (and the ring re-read):
#: it bounds how long a silently dead connection goes unnoticed.
WATCH_IDLE = 60.0
DEFAULT_PREFIX = "/stek"
_ERRORS = (etcd_exc.Etcd3Exception, requests.RequestException, ValueError, KeyError, TypeError)
_OPTIONS = ("kek", "kek_file", "insecure_plaintext", "env", "timeout")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _detail(exc: BaseException) -> str:
    if isinstance(exc, etcd_exc.Etcd3Exception):
        return str(exc.detail_text or exc)
    return str(exc)


class EtcdStore(SharedStore[int]):
    """A sealed keyring under one etcd key, changed by revision-guarded transactions."""

    def __init__(self, client: etcd3gw.Etcd3Client, *, url: str, key: str,
                 sealer: AnySealer, timeout: float = TIMEOUT) -> None:
        super().__init__(url, sealer)
        self._client = client
        self._timeout = timeout
        self.key = key
        self._key64 = _b64(key.encode())

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdStore:
        """Open ``etcd://host:port/prefix``; options: kek, kek_file, insecure_plaintext, timeout."""
        options_only(options, _OPTIONS, "etcd store")
        parts = urlsplit(url)
        if parts.username or parts.password:
            raise ConfigError("etcd URL: user:password@ is not supported (etcd3gw has no auth)")
        try:
            host, port = parts.hostname, parts.port or 2379
        except ValueError:
            raise ConfigError(f"etcd URL {url!r}: bad port") from None
        if not host:
            raise ConfigError(f"etcd URL {url!r}: no host (use etcd://HOST:PORT/PREFIX)")
        prefix = parts.path.rstrip("/") or DEFAULT_PREFIX
        safe = f"etcd://{parts.netloc}{prefix}"
        sealer = sealer_from(
            safe, kek=options.get("kek"), kek_file=options.get("kek_file"),
            insecure_plaintext=options.get("insecure_plaintext"), env=options.get("env"),
        )
        timeout = float(options.get("timeout", TIMEOUT))
        client = etcd3gw.Etcd3Client(host=host, port=port, timeout=timeout)
        return cls(client, url=safe, key=f"{prefix}/keyring", sealer=sealer, timeout=timeout)

    @property
    def ring_id(self) -> str:
        """Sealed values are bound to the key (not the host: see sealing.py)."""
        return f"etcd key {self.key}"

    def __repr__(self) -> str:
        return f"EtcdStore({self.url!r}, {self.sealer.describe})"

    def _post(self, path: str, body: dict[str, Any], action: str) -> dict[str, Any]:
        try:
            resp = self._client.post(self._client.get_url(path), json=body)
            if not isinstance(resp, dict):
                raise TypeError("etcd answered something other than a JSON object")
            return resp
        except _ERRORS as exc:
            raise unavailable(self.url, action, exc, detail=_detail(exc)) from exc

    def _load(self) -> tuple[bytes | None, int]:
        resp = self._post("/kv/range", {"key": self._key64}, "read")
        kvs = resp.get("kvs") or []
        if not kvs:
            return None, 0
        try:
            # The gateway renders int64 as JSON strings, and omits zero values.
            return base64.b64decode(kvs[0].get("value", ""), validate=True), \
                int(kvs[0]["mod_revision"])
        except (KeyError, ValueError, binascii.Error) as exc:
            raise unavailable(self.url, "read", exc, detail="malformed range reply") from exc

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
        resp = self._post("/kv/txn", txn, "write")
        # A failed compare leaves out "succeeded" (proto3 JSON omits false).
        return bool(resp.get("succeeded", False))

    def _listen(self, watch: WatchThread) -> None:
        session = requests.Session()
        watch.on_close(session.close)
        try:
            url = self._client.get_url("/watch")
            resp = session.post(
                url, json={"create_request": {"key": self._key64}}, stream=True,
                timeout=(self._timeout, WATCH_IDLE),
            )
            watch.on_close(lambda: _shutdown(resp))
            if resp.status_code != 200:
                raise etcd_exc.Etcd3Exception(f"watch answered HTTP {resp.status_code}")
            for line in _lines(resp):
                if watch.stop_event.is_set():
                    return
                result = json.loads(line).get("result", {})
                if result.get("created"):
                    watch.ready()
                elif result.get("canceled"):
                    raise etcd_exc.Etcd3Exception("watch canceled by etcd")
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

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.session.close()


def _lines(resp: requests.Response) -> Iterator[bytes]:
    """Lines of a streamed body as they arrive (each chunk is yielded when received)."""
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from (ln for ln in lines if ln.strip())


def _shutdown(resp: requests.Response) -> None:
    """Wake a thread blocked reading the watch stream (closing alone does not)."""
    fd = resp.raw.fileno()
    s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)  # a dup of the fd
    try:
        s.shutdown(socket.SHUT_RDWR)
    finally:
        s.close()
