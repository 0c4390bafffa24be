"""Sealing a ring at rest, and the machinery shared by fleet stores.

A shared store (Redis, etcd) is read by every host of a fleet, and often by
its operators and backups too.  So what it holds is never the ring itself but
the ring *sealed*: ``Keyring.to_bytes()`` encrypted with AES-256-GCM under a
key-encryption key (KEK) that only the fleet's hosts hold.  GCM also makes
the value tamper-evident: whoever can write the store but lacks the KEK
cannot slip in a key of their own (which would let them mint tickets, that
is, forge resumed sessions).

Sealed value layout (version 2)::

    "STEKSEAL"  8 bytes   magic
    0x02        1 byte    format version
    kek_id      8 bytes   SHA-256("stek kek id" 0x00 || KEK)[:8], to say
                          *which* KEK is needed without revealing it
    ring_fp     8 bytes   SHA-256("stek ring id" 0x00 || ring id)[:8]: which
                          ring (store location) this value was sealed for
    generation  8 bytes   the ring's generation, unsigned big-endian
    nonce       12 bytes  random (NIST SP 800-38D section 8.2.2)
    ciphertext  n+16      AES-256-GCM(KEK, nonce, ring,
                          aad = the 33 bytes above || 0x00 || ring id)

The additional data binds the value to its ring and its generation, so that
whoever can write the store but lacks the KEK cannot steer servers with
sealed values that are genuine but out of place:

* A value copied from another ring sealed under the same KEK (another
  prefix, another database: staging into prod) is refused by every reader,
  fresh or running.  A ring's id is where it lives: the backend's kind, its
  database and its key (``redis db 0 key stek:keyring``, ``etcd key
  /stek/keyring``), never the host name, which differs from host to host.
* A replayed older value of the same ring is refused by any reader that has
  seen a newer generation (:meth:`SharedStore.read` and ``update`` keep the
  highest generation seen and count refusals in ``rollbacks_refused``):
  a running server keeps serving its newer snapshot, and a rotator writes
  its newer ring back over the replay (:meth:`SharedStore.update`, which
  also re-seeds a store found empty).  A process that starts after the
  replay has no memory to compare against; see docs/fleet.md.

Version 1 values (no ring id, no generation) are refused by readers, and
by ``stek rekey`` too: a version-1 value put back by a writer without the
KEK (an old backup, another ring's value) is indistinguishable from a
genuine one, and re-sealing it would launder it into a version-2 value that
fresh readers load.  ``stek rekey --format-1`` re-seals one only if its keys
say an agent kept it current (a key active now, activated within the
policy's ``rotate_every``), at a generation above any seen, and prints the
keys it re-sealed (:func:`check_format_1`).

A KEK is 32 random bytes, given as a file (``STEK_KEK_FILE``: one base64 line
per KEK, the first seals, the others only open, for rolling a new KEK out) or
as ``STEK_KEK`` (base64) in the environment.  Without one, a shared store is
refused unless the caller says ``insecure_plaintext=True``
(``--insecure-plaintext``, ``STEK_INSECURE_PLAINTEXT=1``), which is logged loudly.

:class:`SharedStore` is the part every fleet store has in common: one value,
an optimistic compare-and-set on its version (etcd's mod_revision, Redis's
current value), a retry loop around ``mutate`` and the background watcher
thread.  The backends supply ``_load``, ``_swap`` and ``_listen``.
"""

from __future__ import annotations

import abc
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import random
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._atomic import ensure_dir, unsafe_reason, write_file
from ..errors import (
    ConfigError,
    NotInitialized,
    RolledBack,
    SealingError,
    StekError,
    StoreCorrupt,
    StoreUnavailable,
)
from ..keyring import MAX_RING_BYTES, Keyring, next_generation
from .base import Mutator

log = logging.getLogger("stek.stores")

KEK_FILE_ENV = "STEK_KEK_FILE"
KEK_ENV = "STEK_KEK"
INSECURE_ENV = "STEK_INSECURE_PLAINTEXT"
KEK_LEN = 32  # AES-256
MAGIC = b"STEKSEAL"
VERSION = 2
LEGACY_VERSION = 1
_V1_HEADER_LEN = len(MAGIC) + 1 + 8
_HEADER_LEN = len(MAGIC) + 1 + 8 + 8 + 8
_NONCE_LEN = 12  # NIST SP 800-38D: 96-bit IVs for random nonces
_TAG_LEN = 16

#: Bytes: the largest value a fleet store's reader takes in, checked before
#: the transfer (a ring is at most MAX_RING_BYTES, plus the sealing's 61).  A
#: writer without the KEK may store far more (Redis: 512 MiB): read whole, it
#: would cost every reader its memory and CPU on every re-read.
MAX_VALUE_BYTES = MAX_RING_BYTES + MAX_RING_BYTES // 10

#: Attempts of an update's compare-and-set before giving up (each conflict
#: means another writer succeeded, so progress is being made fleet-wide).
MAX_ATTEMPTS = 64


def kek_id(kek: bytes) -> str:
    """A public fingerprint of a KEK (hex): says which KEK sealed a value."""
    return hashlib.sha256(b"stek kek id\x00" + kek).digest()[:8].hex()


def ring_fingerprint(ring_id: str) -> str:
    """A public fingerprint of a ring id (hex), carried in the sealed header."""
    return hashlib.sha256(b"stek ring id\x00" + ring_id.encode()).digest()[:8].hex()


def generate_kek() -> bytes:
    return os.urandom(KEK_LEN)


def _parse_kek(text: str, where: str) -> bytes:
    try:
        kek = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not a base64 key-encryption key") from None
    if len(kek) != KEK_LEN:
        raise ConfigError(f"{where}: a key-encryption key is {KEK_LEN} bytes, got {len(kek)}")
    if not any(kek):
        raise ConfigError(f"{where}: the key-encryption key is all zeros")
    return kek


def read_kek_file(path: str | os.PathLike[str]) -> list[bytes]:
    """The KEKs in a KEK file: the first seals, any further ones only open.

    The file must be owned by this user or root and readable by nobody else
    (mode 0600 or 0400): a KEK others can read opens every sealed ring, and a
    file others can write lets them choose it.  A symbolic link is followed
    (secret mounts are made of them); the file it leads to is what is checked.
    """
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(64 * 1024) if stat.S_ISREG(st.st_mode) else b""
        text = raw.decode("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise ConfigError(f"KEK file {p}: cannot read: {reason}") from None
    reason = "not a regular file" if not stat.S_ISREG(st.st_mode) else \
        unsafe_reason(st, forbidden=0o077)
    if reason is not None:
        raise ConfigError(f"KEK file {p}: refusing it: {reason}; chmod 600 it, as its owner")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError(f"KEK file {p}: holds no key")
    return [_parse_kek(ln, f"KEK file {p} line {i + 1}") for i, ln in enumerate(lines)]


def write_kek_file(path: str | os.PathLike[str], kek: bytes | None = None, *,
                   force: bool = False) -> bytes:
    """Write a new KEK file, mode 0600, atomically (write, fsync, rename).

    Refuses to replace an existing file unless ``force``: losing a KEK loses
    the ring it sealed.
    """
    key = kek if kek is not None else generate_kek()
    p = Path(path).expanduser()
    if p.exists() and not force:
        raise StekError(f"{p} exists; refusing to replace a key-encryption key (use --force)")
    body = (f"# stek key-encryption key {kek_id(key)} (AES-256-GCM, base64)\n"
            f"{base64.b64encode(key).decode()}\n").encode()
    try:
        ensure_dir(p.parent)
        write_file(p, body)
    except OSError as exc:
        raise StekError(f"{p}: cannot write KEK file: {exc.strerror}") from None
    return key


class Sealer:
    """Seals and opens ring bytes under a KEK (plus older KEKs that only open)."""

    sealed = True

    def __init__(self, kek: bytes, older: tuple[bytes, ...] = ()) -> None:
        for k in (kek, *older):
            if len(k) != KEK_LEN:
                raise ConfigError(f"a key-encryption key is {KEK_LEN} bytes, got {len(k)}")
        self.kek_id = kek_id(kek)
        self._seal = AESGCM(kek)
        self._open = {kek_id(k): AESGCM(k) for k in (kek, *older)}

    def __repr__(self) -> str:
        return f"Sealer(kek_id={self.kek_id}, opens={sorted(self._open)})"

    @property
    def describe(self) -> str:
        return f"sealed under KEK {self.kek_id}"

    def seal(self, plain: bytes, ring_id: str, generation: int) -> bytes:
        """Seal ``plain`` (the ring at ``generation``) for the ring ``ring_id``."""
        header = (MAGIC + bytes([VERSION]) + bytes.fromhex(self.kek_id)
                  + bytes.fromhex(ring_fingerprint(ring_id)) + generation.to_bytes(8, "big"))
        nonce = os.urandom(_NONCE_LEN)
        return header + nonce + self._seal.encrypt(nonce, plain, _aad(header, ring_id))

    def open(self, blob: bytes, where: str, ring_id: str, *,
             legacy: bool = False) -> tuple[bytes, int | None]:
        """The ring bytes in ``blob`` and the generation it was sealed at.

        Raises :class:`SealingError` for anything but a genuine value sealed
        for ``ring_id`` under a KEK this sealer holds.  ``legacy`` also opens
        version 1 values (generation None): only re-sealing asks for that.
        """
        if not blob.startswith(MAGIC):
            if blob.lstrip().startswith(b"{"):
                # Accepting it would let anyone with write access to the
                # store inject keys: with a KEK, only sealed rings are read.
                raise SealingError(
                    f"{where}: holds an unsealed (plaintext) ring; refusing it while a KEK "
                    f"is configured (seal it with 'stek rekey --insecure-plaintext "
                    f"--new-kek-file PATH')"
                )
            raise SealingError(f"{where}: not a sealed stek keyring")
        version = blob[len(MAGIC)] if len(blob) > len(MAGIC) else None
        if version == LEGACY_VERSION:
            if not legacy:
                # No advice to re-seal it: a replayed old value looks exactly
                # like this, and re-sealing would launder it (module doc).
                raise SealingError(
                    f"{where}: sealed in format 1, which binds neither the store nor the "
                    f"generation, so an old value put back looks the same; refusing it "
                    f"(docs/fleet.md, 'Replayed and copied values', says what to do)"
                )
            return self._open_v1(blob, where), None
        if version != VERSION or len(blob) < _HEADER_LEN + _NONCE_LEN + _TAG_LEN:
            raise SealingError(f"{where}: sealed value is truncated or of an unknown version")
        header, nonce = blob[:_HEADER_LEN], blob[_HEADER_LEN:_HEADER_LEN + _NONCE_LEN]
        aead = self._aead(header[len(MAGIC) + 1:len(MAGIC) + 9].hex(), where)
        sealed_for, mine = header[17:25].hex(), ring_fingerprint(ring_id)
        if sealed_for != mine:
            raise SealingError(
                f"{where}: holds a ring sealed for another store ({sealed_for}, this one is "
                f"{mine}): copied from another prefix or database; refusing it"
            )
        try:
            plain = aead.decrypt(nonce, blob[_HEADER_LEN + _NONCE_LEN:], _aad(header, ring_id))
        except InvalidTag:
            raise SealingError(
                f"{where}: sealed value fails its integrity check (altered or damaged)"
            ) from None
        return plain, int.from_bytes(header[25:33], "big")

    def _aead(self, wanted: str, where: str) -> AESGCM:
        aead = self._open.get(wanted)
        if aead is None:
            raise SealingError(
                f"{where}: sealed under KEK {wanted}, but the KEK given is {self.kek_id}: "
                f"wrong key-encryption key"
            )
        return aead

    def _open_v1(self, blob: bytes, where: str) -> bytes:
        if len(blob) < _V1_HEADER_LEN + _NONCE_LEN + _TAG_LEN:
            raise SealingError(f"{where}: sealed value is truncated or of an unknown version")
        header = blob[:_V1_HEADER_LEN]
        nonce = blob[_V1_HEADER_LEN:_V1_HEADER_LEN + _NONCE_LEN]
        aead = self._aead(header[len(MAGIC) + 1:].hex(), where)
        try:
            return aead.decrypt(nonce, blob[_V1_HEADER_LEN + _NONCE_LEN:], header)
        except InvalidTag:
            raise SealingError(
                f"{where}: sealed value fails its integrity check (altered or damaged)"
            ) from None


def _aad(header: bytes, ring_id: str) -> bytes:
    return header + b"\x00" + ring_id.encode()


class Plaintext:
    """No sealing: the ring is stored readable.  Only on explicit request."""

    sealed = False
    kek_id = "none"
    describe = "NOT SEALED (insecure plaintext)"

    def __repr__(self) -> str:
        return "Plaintext()"

    def seal(self, plain: bytes, ring_id: str, generation: int) -> bytes:
        return plain

    def open(self, blob: bytes, where: str, ring_id: str, *,
             legacy: bool = False) -> tuple[bytes, int | None]:
        if blob.startswith(MAGIC):
            raise SealingError(
                f"{where}: holds a sealed ring; give its key-encryption key "
                f"(--kek-file, ${KEK_FILE_ENV} or ${KEK_ENV})"
            )
        return blob, None


AnySealer = Sealer | Plaintext


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def sealer_from(
    where: str,
    *,
    kek: bytes | str | None = None,
    kek_file: str | os.PathLike[str] | None = None,
    insecure_plaintext: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> AnySealer:
    """The sealer a shared store at ``where`` uses.

    Precedence: ``kek`` (32 bytes, or base64 text), ``kek_file``, then
    ``$STEK_KEK_FILE``, ``$STEK_KEK``.  With no KEK at all, the store is
    refused (:class:`~stek.errors.ConfigError`) unless ``insecure_plaintext``
    (or ``$STEK_INSECURE_PLAINTEXT=1`` when the argument is None).
    """
    e = os.environ if env is None else env
    keks: list[bytes] | None = None
    if kek is not None:
        keks = [_parse_kek(kek, "kek") if isinstance(kek, str) else kek]
    elif kek_file is not None:
        keks = read_kek_file(kek_file)
    elif e.get(KEK_FILE_ENV):
        keks = read_kek_file(e[KEK_FILE_ENV])
    elif e.get(KEK_ENV):
        keks = [_parse_kek(e[KEK_ENV], f"${KEK_ENV}")]
    if keks is not None:
        return Sealer(keks[0], tuple(keks[1:]))
    insecure = _truthy(e.get(INSECURE_ENV)) if insecure_plaintext is None else insecure_plaintext
    if insecure:
        log.warning(
            "INSECURE: %s will hold session ticket keys in PLAINTEXT: anyone who can read "
            "it can decrypt every resumed session's secrets, and anyone who can write it "
            "can forge sessions.  Create a KEK with 'stek kek PATH' and set $%s.",
            where, KEK_FILE_ENV,
        )
        return Plaintext()
    raise ConfigError(
        f"{where} is a shared store: it needs a key-encryption key to seal the ring "
        f"(create one with 'stek kek PATH', then pass --kek-file PATH or set ${KEK_FILE_ENV}); "
        f"--insecure-plaintext stores the keys readable"
    )


# -- what every fleet store shares ------------------------------------------------------

T = TypeVar("T")


class WatchThread:
    """Runs a backend's ``listen(watch)`` in a daemon thread, reconnecting with backoff.

    ``listen`` blocks while connected: it calls ``watch.ready()`` once its
    subscription is in place and ``watch.changed()`` for every notification,
    polls ``watch.stop_event``, and returns or raises when the connection
    ends.  Losing the connection notifies (the consumer's re-read then fails
    and it knows it is serving a snapshot), and so does ``ready()``, so that
    a change missed while disconnected is re-read.
    """

    def __init__(self, name: str, url: str, listen: Callable[[WatchThread], None],
                 on_change: Callable[[], None]) -> None:
        self._url = url
        self._listen = listen
        self._cb = on_change
        self.stop_event = threading.Event()
        self.connected = threading.Event()
        self.reconnects = 0
        self._closers: list[Callable[[], None]] = []
        self._closers_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def changed(self) -> None:
        try:
            self._cb()
        except Exception:  # a subscriber's failure must not kill the watch
            log.exception("change subscriber failed")

    def ready(self) -> None:
        self.connected.set()
        self.changed()

    def _run(self) -> None:
        backoff = 0.05
        failing = False
        while not self.stop_event.is_set():
            lost = False
            try:
                self._listen(self)  # a normal return: idle stream, reconnect quietly
                failing = False
                backoff = 0.05
            except Exception as exc:
                lost = True
                if not self.stop_event.is_set() and not failing:
                    log.warning("watch on %s lost (%s); reconnecting", self._url,
                                type(exc).__name__)
                failing = True
            with self._closers_lock:
                self._closers.clear()
            if self.stop_event.is_set():
                return
            if lost and self.connected.is_set():
                # Tell the consumer at once: its re-read fails, so it knows
                # (and logs) that it is serving from its last snapshot.
                self.connected.clear()
                self.changed()
            self.connected.clear()
            self.reconnects += 1
            # Jittered exponential backoff, capped at 1 s so that a store that
            # comes back is watched again (and re-read) within about a second.
            self.stop_event.wait(backoff * (0.5 + random.random()))
            backoff = min(1.0, backoff * 2)

    def on_close(self, fn: Callable[[], None]) -> None:
        """Register how to interrupt the current connection from close()."""
        with self._closers_lock:
            self._closers.append(fn)

    def close(self) -> None:
        self.stop_event.set()
        with self._closers_lock:
            closers = list(self._closers)
        for fn in closers:
            with contextlib.suppress(Exception):
                fn()
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)


class SharedStore(abc.ABC, Generic[T]):
    """One sealed value with optimistic concurrency: the shape of every fleet store.

    ``T`` is the backend's version token (what ``_swap`` compares against).
    """

    url: str

    def __init__(self, url: str, sealer: AnySealer) -> None:
        self.url = url
        self.sealer = sealer
        #: Round trips to the store, by kind: the benchmark reports them per rotation.
        self.ops: dict[str, int] = {"read": 0, "cas": 0, "conflict": 0}
        self._ops_lock = threading.Lock()
        #: The highest generation this store object has read or written, and
        #: how many older (rolled-back, replayed) values it has refused.
        self.seen_generation = -1
        self.rollbacks_refused = 0
        self._logged_rollback: tuple[int, int] | None = None
        #: The newest ring this object read or wrote: what a write re-seeds
        #: the store from when it finds it empty or rolled back.
        self.last_ring: Keyring | None = None
        #: Keys revoked in any ring seen (name -> when it would have expired):
        #: dropped from every ring read, whoever wrote it.
        self.revoked: dict[bytes, int] = {}
        #: How many times this object re-seeded the store, and the last time why.
        self.reseeds = 0
        self.last_reseed: str | None = None

    @property
    def ring_id(self) -> str:
        """What sealed values are bound to: where the ring lives (backends say it
        without the host name, which differs from host to host)."""
        return self.url

    def _count(self, kind: str) -> None:
        with self._ops_lock:
            self.ops[kind] += 1

    # -- backend ---------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> tuple[bytes | None, T]:
        """The raw value (None if absent) and its version token."""

    @abc.abstractmethod
    def _swap(self, token: T, data: bytes) -> bool:
        """Write ``data`` if the value still has version ``token``; False on conflict."""

    # -- KeyStore --------------------------------------------------------------------
    def _decode(self, blob: bytes, floor: int, now: float | None = None) -> Keyring:
        """Open ``blob``, loaded after this store had seen generation ``floor``."""
        return self._remember(self._open(blob, floor, now))

    def _open(self, blob: bytes, floor: int, now: float | None = None) -> Keyring:
        """The ring in ``blob`` as written (rollbacks refused, revoked keys left in)."""
        plain, generation = self.sealer.open(blob, self.url, self.ring_id)
        ring = Keyring.from_bytes(plain, self.url, now)
        if generation is not None and generation != ring.generation:
            raise SealingError(f"{self.url}: sealed generation {generation} does not match "
                               f"the ring's ({ring.generation})")
        self._admit(ring.generation, floor)
        return ring

    def _remember(self, ring: Keyring) -> Keyring:
        """``ring`` without the keys revoked in any ring seen; kept as the last if newest."""
        now = time.time()
        with self._ops_lock:
            for name, t in ring.revoked:
                self.revoked[name] = max(t, self.revoked.get(name, t))
            self.revoked = {n: t for n, t in self.revoked.items() if t > now}
            ring = ring.without(self.revoked, now)
            if self.last_ring is None or ring.generation >= self.last_ring.generation:
                self.last_ring = ring
        return ring

    def _note(self, generation: int) -> None:
        with self._ops_lock:
            self.seen_generation = max(self.seen_generation, generation)

    def _reseeded(self) -> Keyring | None:
        """The last ring seen, numbered above every generation seen; None if none was seen."""
        with self._ops_lock:
            last = self.last_ring
            if last is None:
                return None
            top = max(self.seen_generation, last.generation)
        return last.at_generation(next_generation(top, time.time()))

    def _reseed_done(self, why: str, old: int, new: Keyring) -> None:
        """Say once, at WARNING, that this process wrote its snapshot back."""
        self.reseeds += 1
        self.last_reseed = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: the store "
                            f"{why}; re-seeded from generation {old} as generation "
                            f"{new.generation}")
        log.warning("%s: the store %s; re-seeded it from this process's last snapshot "
                    "(generation %d) as generation %d, same keys and policy", self.url, why,
                    old, new.generation)

    def _admit(self, generation: int, floor: int) -> None:
        """Refuse a generation older than one seen before the value was loaded.

        The refusal is an error, so whoever reads (the installation's
        refresher, the agent) keeps the newer snapshot it already holds.
        Only ``floor``, what was seen when the load was sent, counts: another
        thread may have seen a newer value while this load was in flight.
        """
        with self._ops_lock:
            seen = floor
            if generation >= floor:
                self.seen_generation = max(self.seen_generation, generation)
                return
            self.rollbacks_refused += 1
            first = self._logged_rollback != (seen, generation)
            self._logged_rollback = (seen, generation)
        if first:
            log.warning("%s: refusing keyring generation %d, older than generation %d "
                        "already seen (a replayed or rolled-back value)", self.url,
                        generation, seen)
        raise RolledBack(
            f"{self.url}: holds keyring generation {generation}, older than generation "
            f"{seen} already seen: refusing a rolled-back (replayed) ring"
        )

    def read_raw(self) -> bytes | None:
        """The value exactly as stored (sealed): for inspection and tests."""
        self._count("read")
        return self._load()[0]

    def read(self) -> Keyring:
        self._count("read")
        floor = self.seen_generation
        blob, _ = self._load()
        if blob is None:
            raise NotInitialized(f"{self.url}: no keyring yet (run 'stek init')")
        return self._decode(blob, floor, time.time())

    def update(self, mutate: Mutator) -> Keyring:
        for attempt in range(MAX_ATTEMPTS):
            self._count("read")
            floor = self.seen_generation
            blob, token = self._load()
            # Unreadable content (wrong KEK, corrupt) raises here, before any
            # write.  A process that saw a ring never initialises an empty
            # store, nor gives in to an older ring: it writes its last
            # snapshot back, numbered above every generation seen, keys and
            # policy unchanged (docs/fleet.md, "When the store comes back empty").
            current, why, raw = None, "was empty", None
            if blob is not None:
                try:
                    raw = self._open(blob, floor)
                except RolledBack:
                    if self.last_ring is None:
                        raise
                    why = "held an older generation"
                else:
                    current = self._remember(raw)
            forced, old = False, -1
            if current is None:
                current = self._reseeded()
                forced = current is not None
                old = self.last_ring.generation if self.last_ring is not None else -1
            elif raw is not None and current.keys != raw.keys:
                # The stored ring still holds a key revoked in a ring seen (an
                # older snapshot written back): write it without, the
                # revocation remembered.  (A ring that only lacks a revocation
                # is not rewritten for that alone: clocks that disagree on
                # when it lapses would take turns putting it back.)
                current = current.at_generation(next_generation(current.generation, time.time()))
                forced, why = True, "held a revoked key"
            new = mutate(current)
            if new is None or new is current:
                if current is None:
                    raise NotInitialized(f"{self.url}: no keyring yet (run 'stek init')")
                if not forced:
                    return current
                new = current
            self._count("cas")
            if self._swap(token, self.sealer.seal(new.to_bytes(), self.ring_id, new.generation)):
                self._note(new.generation)
                self._remember(new)
                if forced and raw is None:
                    self._reseed_done(why, old, new)
                elif forced:
                    log.warning("%s: the store %s; wrote generation %d without it", self.url,
                                why, new.generation)
                return new
            # Another writer got there first: re-read and re-plan.  Jitter keeps
            # a crowd of racers from colliding in lock step.
            self._count("conflict")
            time.sleep(random.random() * min(0.05, 0.002 * (attempt + 1)))
        raise StoreUnavailable(f"{self.url}: gave up after {MAX_ATTEMPTS} conflicting writes")

    def reseal(self, new: AnySealer, *, format_1: bool = False,
               now: float | None = None) -> Keyring:
        """Re-seal the stored ring under ``new`` (KEK rotation), atomically; the ring written.

        The ring's bytes are carried over unchanged: no key is lost, and a
        concurrent rotation either lands before (and is re-sealed) or after
        (and is sealed under ``new`` by a writer that holds it).  A value in
        the older format 1 is refused unless ``format_1``, and then only if
        :func:`check_format_1` finds it current; it is written in the current
        format at a generation above its own and any seen.
        """
        for _ in range(MAX_ATTEMPTS):
            self._count("read")
            floor = self.seen_generation
            blob, token = self._load()
            if blob is None:
                raise NotInitialized(f"{self.url}: no keyring yet (run 'stek init')")
            if is_format_1(blob) and not format_1:
                raise SealingError(
                    f"{self.url}: sealed in format 1, which binds neither the store nor the "
                    f"generation, so an old value put back looks the same; refusing to "
                    f"re-seal it (--format-1 re-seals a format-1 ring that is current)")
            plain, _ = self.sealer.open(blob, self.url, self.ring_id, legacy=format_1)
            ring = Keyring.from_bytes(plain, self.url)
            if is_format_1(blob):
                check_format_1(ring, self.url, time.time() if now is None else now)
                when = time.time() if now is None else now
                ring = Keyring(ring.policy, ring.keys,
                               next_generation(max(ring.generation, floor), when))
                plain = ring.to_bytes()
            else:
                self._admit(ring.generation, floor)
            self._count("cas")
            if self._swap(token, new.seal(plain, self.ring_id, ring.generation)):
                self._note(ring.generation)
                self.sealer = new
                return ring
            self._count("conflict")
            time.sleep(random.random() * 0.01)
        raise StoreUnavailable(f"{self.url}: gave up after {MAX_ATTEMPTS} conflicting writes")

    @abc.abstractmethod
    def subscribe(self, on_change: Callable[[], None]) -> WatchThread: ...

    def close(self) -> None:
        """Release connections (backends override)."""


def is_format_1(blob: bytes) -> bool:
    """Whether ``blob`` is a sealed value in format 1 (no ring id, no generation)."""
    return blob[:len(MAGIC) + 1] == MAGIC + bytes([LEGACY_VERSION])


#: Seconds of clock skew allowed between the host that rotated a ring and the one
#: that re-seals it.
_SKEW = 300


def check_format_1(ring: Keyring, where: str, now: float) -> None:
    """Refuse to re-seal a format-1 ring no agent was keeping current.

    A genuine format-1 ring met on an upgrade was rotated until the upgrade:
    one of its keys activated within ``rotate_every`` (plus clock skew).  A
    value put back from an old backup has no such key, and re-sealing it
    would hand fresh readers old keys and an old policy.
    """
    started = [k.activates_at for k in ring.keys if k.activates_at <= now + _SKEW]
    newest = max(started, default=None)
    if newest is None or now - newest > ring.policy.rotate_every + _SKEW:
        age = "no key ever active" if newest is None else \
            f"its newest key activated {int(now - newest)}s ago"
        raise SealingError(
            f"{where}: the format-1 ring is stale ({age}, rotate_every is "
            f"{ring.policy.rotate_every}s): an old value put back, not a ring an agent "
            f"kept; refusing to re-seal it (restore the newest ring with 'stek migrate "
            f"--force' from a trusted copy, or start anew with 'stek init --force')")


def too_large(url: str, size: int | None = None) -> StoreCorrupt:
    """The error for a stored value larger than :data:`MAX_VALUE_BYTES` (not read)."""
    what = f"{size} bytes" if size is not None else f"more than {MAX_VALUE_BYTES} bytes"
    return StoreCorrupt(f"{url}: holds a value of {what}, larger than any sealed ring "
                        f"({MAX_VALUE_BYTES} bytes at most): refusing to read it")


def unavailable(url: str, action: str, exc: BaseException, *secrets: str,
                detail: str | None = None) -> StoreUnavailable:
    """A StoreUnavailable naming the failure, with any secret scrubbed from the text."""
    text = f"{type(exc).__name__}: {detail if detail is not None else exc}"
    text = text if len(text) <= 300 else text[:300] + "..."
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return StoreUnavailable(f"{url}: cannot {action}: {text}")


def options_only(options: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown store option(s): {', '.join(unknown)}")
