"""Sealing a ring at rest: the sealed format and the key-encryption key (KEK) files.

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
  seen a newer generation (:meth:`~stek.stores.shared.SharedStore.read` and ``update`` keep the
  highest generation seen and count refusals in ``rollbacks_refused``):
  a running server keeps serving its newer snapshot, and a rotator writes
  its newer ring back over the replay (:meth:`~stek.stores.shared.SharedStore.update`, which
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

What every fleet store does with a sealed value (compare-and-set, retries,
rollback refusal, the watcher thread) is :mod:`stek.stores.shared`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._atomic import ensure_dir, unsafe_reason, write_file
from ..errors import (
    ConfigError,
    SealingError,
    StekError,
)
from ..keyring import MAX_RING_BYTES, Keyring

if TYPE_CHECKING:
    from .shared import MAX_ATTEMPTS as MAX_ATTEMPTS
    from .shared import SharedStore as SharedStore
    from .shared import WatchThread as WatchThread
    from .shared import options_only as options_only
    from .shared import too_large as too_large
    from .shared import unavailable as unavailable

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


#: Moved to :mod:`stek.stores.shared`; still importable from here, loaded on
#: first use (shared imports this module, so not at import time).
_MOVED = ("MAX_ATTEMPTS", "SharedStore", "WatchThread", "options_only", "too_large",
          "unavailable")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from . import shared

        return getattr(shared, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
