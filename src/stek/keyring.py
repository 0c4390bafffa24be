"""An immutable snapshot of a ring: its policy, its keys, the callback's answers.

A :class:`Keyring` is what every adapter passes around: stores read and write
it, the callback reads the latest one from memory (no I/O on the handshake
path), exporters lay it out for other servers.  It validates the invariants
of docs/design.md on construction, so an invalid ring can never be installed.

The serialized form (``to_bytes`` / ``from_bytes``) is a small JSON document;
stores wrap it (the file store as is, with 0600 permissions; shared stores
sealed under a key-encryption key).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, KeyringError, StoreCorrupt
from .keys import NAME_LEN, TicketKey
from .schedule import (
    MAX_INSTANT,
    MAX_KEYS,
    Answer,
    Plan,
    Policy,
    check_windows,
    decrypt_answer,
    encrypting_key,
)

FORMAT = "stek-keyring"
FORMAT_VERSION = 1
#: A serialized ring of MAX_KEYS keys is about 20 KB; anything far larger is
#: not a ring, and is refused before it is parsed.
MAX_RING_BYTES = 1 << 20
#: A ring nests 3 deep (ring, its key list, a key).  CPython's json parser
#: recurses once per level, in C, on the calling thread's stack (a
#: refresher's may be small), so deeper text is refused before it is parsed.
MAX_DEPTH = 16
#: Generations fit the sealed header's unsigned 64-bit field (stores/sealing.py).
MAX_GENERATION = 2**63 - 1
#: Revoked names a ring remembers (each until its key would have expired).
MAX_REVOKED = 4 * MAX_KEYS


def next_generation(seen: int, now: float) -> int:
    """The generation of a ring written anew (created, re-seeded, revoked) at ``now``.

    Above ``seen`` and at least ``now`` in milliseconds since the epoch: a
    process with no memory of the ring (the store came back empty, every
    process that saw it is gone) still numbers its ring above every ring
    written before, as long as clocks agree and no ring changed more than
    1000 times a second on average since it was created (every other change
    adds one).  Readers that saw a generation refuse any lower one
    (stores/sealing.py), so numbers from time keep that refusal for replays.
    """
    return min(MAX_GENERATION, max(seen + 1, int(now * 1000)))


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN, Infinity and -Infinity by default (not JSON, RFC 8259 section 6).
    raise ValueError(f"{name} is not a number")


# Brackets count +1 and -1 (as signed bytes); every other byte is dropped.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(data: bytes) -> int:
    """How deep the arrays and objects of the JSON text ``data`` nest; no recursion.

    RFC 8259 section 7: inside a string a quotation mark is always escaped
    and a backslash always starts an escape, so once escaped backslashes and
    quotation marks are gone, the quotation marks left delimit the strings,
    and the brackets outside them are the structure.  Exact for valid UTF-8
    JSON; for invalid text, exact up to the first error, where a parser stops.
    """
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    steps = outside.translate(_STEPS, _NOT_BRACKETS)
    return max(itertools.accumulate(memoryview(steps).cast("b")), default=0)


def parse_document(data: bytes, where: str = "keyring") -> Any:
    """The JSON value of a keyring file or sealed value; StoreCorrupt for anything else.

    Sizes past :data:`MAX_RING_BYTES` and nesting past :data:`MAX_DEPTH` are
    refused before parsing; the text must be UTF-8 (what ``to_bytes``
    writes: ``json.loads`` would also guess UTF-16 or UTF-32 from bytes).
    """
    if len(data) > MAX_RING_BYTES:
        raise StoreCorrupt(f"{where}: not a stek keyring (larger than {MAX_RING_BYTES} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreCorrupt(f"{where}: not a stek keyring (not JSON)") from None
    if nesting_depth(data) > MAX_DEPTH:
        raise StoreCorrupt(f"{where}: not a stek keyring (not JSON: nested more than "
                           f"{MAX_DEPTH} levels deep)")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        # JSONDecodeError, NaN/Infinity and integers past CPython's digit limit.
        raise StoreCorrupt(f"{where}: not a stek keyring (not JSON)") from None


def _int(value: Any, label: str, high: int, low: int = 0) -> int:
    """A JSON integer in [low, high]: never a float, a string or a bool."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise KeyringError(f"{label} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True, slots=True, repr=False)
class Keyring:
    """Policy + keys (+ a generation counter bumped on every change).

    ``revoked`` maps the names of keys taken out by ``stek revoke`` to the
    instant each would have expired: until then a process that saw the
    revocation drops such a key from any ring it reads (an older snapshot
    written back after the store lost its value must not bring it back).
    """

    policy: Policy
    keys: tuple[TicketKey, ...] = ()
    generation: int = 0
    revoked: tuple[tuple[bytes, int], ...] = ()
    _by_name: Mapping[bytes, TicketKey] = field(init=False, compare=False)
    #: Values derived from this snapshot by other modules (the codec's prepared
    #: primitives): they live exactly as long as the ring they came from.
    _derived: dict[str, Any] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        keys = tuple(sorted(self.keys, key=lambda k: (k.activates_at, k.name)))
        object.__setattr__(self, "keys", keys)
        validate_keys(keys, self.policy.key_size)
        revoked = dict(sorted(self.revoked))
        if len(revoked) > MAX_REVOKED:
            raise KeyringError(f"a ring remembers at most {MAX_REVOKED} revoked keys")
        for name in revoked:
            if len(name) != NAME_LEN:
                raise KeyringError(f"revoked key name must be {NAME_LEN} bytes")
        object.__setattr__(self, "revoked", tuple(revoked.items()))
        object.__setattr__(self, "_by_name", {k.name: k for k in keys})
        if not revoked.keys().isdisjoint(self._by_name):
            raise KeyringError("a revoked key is still in the ring")
        object.__setattr__(self, "_derived", {})

    def __repr__(self) -> str:
        return (
            f"Keyring(generation={self.generation}, policy={self.policy.to_dict()}, "
            f"keys=[{', '.join(k.name.hex() for k in self.keys)}])"
        )

    def __iter__(self) -> Iterator[TicketKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    # -- the callback's two questions -------------------------------------------
    def find(self, name: bytes) -> TicketKey | None:
        """Look a ticket's key name up.  ``name`` is attacker-chosen: any 16 bytes."""
        return self._by_name.get(bytes(name))

    def encrypting_key(self, now: float) -> TicketKey | None:
        return encrypting_key(self.keys, now)

    def decide(self, name: bytes, now: float, tls13: bool) -> tuple[Answer, TicketKey | None]:
        """enc=0: the answer for a presented ticket, and the key to decrypt it with."""
        key = self.find(name)
        answer = decrypt_answer(key, now, tls13)
        return answer, (key if answer != Answer.NO_TICKET else None)

    # -- evolution ------------------------------------------------------------------
    def apply(self, change: Plan) -> Keyring:
        if change.empty:
            return self
        dropped = set(change.drop)
        keys = [k for k in self.keys if k.name not in dropped] + list(change.add)
        return Keyring(self.policy, tuple(keys), self.generation + 1, self.revoked)

    def at_generation(self, generation: int) -> Keyring:
        """The same ring, renumbered (a re-seed or a revocation moves it forward)."""
        return Keyring(self.policy, self.keys, generation, self.revoked)

    def without(self, revoked: Mapping[bytes, int], now: float) -> Keyring:
        """This ring with the keys named in ``revoked`` taken out and remembered.

        Entries whose key would have expired by ``now`` are forgotten: such a
        key is refused by its own windows.  Returns ``self`` when nothing changes.
        """
        merged = dict(revoked)
        for name, t in self.revoked:
            merged[name] = max(t, merged.get(name, t))
        merged = {n: t for n, t in merged.items() if t > now}
        keys = tuple(k for k in self.keys if k.name not in merged)
        kept = tuple(sorted(merged.items()))
        if keys == self.keys and kept == self.revoked:
            return self
        return Keyring(self.policy, keys, self.generation, kept)

    def with_policy(self, policy: Policy) -> Keyring:
        """The same keys under ``policy``, each window cut down to what ``policy`` allows.

        Readers refuse keys whose windows exceed the ring's policy
        (:func:`~stek.schedule.check_windows`), so a shorter policy shortens
        the keys already in the ring; a longer one leaves them as they are.
        """
        keys = []
        for k in self.keys:
            retires = min(k.retires_at, k.activates_at + policy.rotate_every)
            expires = min(k.expires_at, retires + policy.accept_for)
            if (retires, expires) != (k.retires_at, k.expires_at):
                k = TicketKey(k.name, k.aes_key, k.hmac_key, k.activates_at, retires, expires)
            keys.append(k)
        return Keyring(policy, tuple(keys), self.generation + 1, self.revoked)

    def check(self, now: float | None = None) -> None:
        """Raise :class:`~stek.errors.KeyringError` if a key's windows exceed the policy."""
        check_windows(self.keys, self.policy, now)

    # -- serialization ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "generation": self.generation,
            "policy": self.policy.to_dict(),
            "keys": [
                {
                    "name": k.name.hex(),
                    "aes_key": base64.b64encode(k.aes_key).decode(),
                    "hmac_key": base64.b64encode(k.hmac_key).decode(),
                    "activates_at": k.activates_at,
                    "retires_at": k.retires_at,
                    "expires_at": k.expires_at,
                }
                for k in self.keys
            ],
        }
        if self.revoked:
            # Only when there is one, so rings without revocations read the
            # same in stek versions that predate the field.
            doc["revoked"] = [{"name": n.hex(), "expires_at": t}
                              for n, t in self.revoked]
        return doc

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "keyring", now: float | None = None) -> Keyring:
        """Parse a serialized ring; anything else raises :class:`StoreCorrupt`.

        Whatever the bytes, this returns a valid ring or raises StoreCorrupt,
        never any other error (tests/integration/test_keyring_fuzz.py).  Every key's
        windows are checked against the ring's policy, and with ``now``, how
        far ahead it activates too (:func:`~stek.schedule.check_windows`).
        Messages name the problem and never quote the content (it may be keys).
        """
        doc = parse_document(data, where)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StoreCorrupt(f"{where}: not a stek keyring (no '{FORMAT}' marker)")
        if doc.get("version") != FORMAT_VERSION or isinstance(doc.get("version"), bool):
            shown = doc.get("version")
            shown = shown if isinstance(shown, int) and abs(shown) < 10**6 else "?"
            raise StoreCorrupt(
                f"{where}: keyring format version {shown!r} is not supported "
                f"(this stek reads version {FORMAT_VERSION})"
            )
        try:
            ring = cls._from_doc(doc)
            ring.check(now)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            # KeyringError and ConfigError are ValueErrors whose messages name
            # the invariant (never key bytes); others are named by type only.
            detail = str(exc) if isinstance(exc, (KeyringError, ConfigError)) \
                else type(exc).__name__
            raise StoreCorrupt(f"{where}: invalid keyring ({detail})") from None
        return ring

    @classmethod
    def _from_doc(cls, doc: dict[str, Any]) -> Keyring:
        pol = doc["policy"]
        policy = Policy(
            rotate_every=_int(pol["rotate_every"], "rotate_every", MAX_INSTANT),
            accept_for=_int(pol["accept_for"], "accept_for", MAX_INSTANT),
            publish_ahead=_int(pol["publish_ahead"], "publish_ahead", MAX_INSTANT),
            key_size=_int(pol.get("key_size", 80), "key_size", 80),
        )
        items = doc["keys"]
        if not isinstance(items, list) or len(items) > MAX_KEYS:
            raise KeyringError(f"keys must be a list of at most {MAX_KEYS} keys")
        keys = []
        for item in items:
            name, aes, mac = item["name"], item["aes_key"], item["hmac_key"]
            if not all(isinstance(v, str) for v in (name, aes, mac)):
                raise TypeError("key fields must be strings")
            keys.append(TicketKey(
                name=bytes.fromhex(name),
                aes_key=base64.b64decode(aes, validate=True),
                hmac_key=base64.b64decode(mac, validate=True),
                activates_at=_int(item["activates_at"], "activates_at", MAX_INSTANT),
                retires_at=_int(item["retires_at"], "retires_at", MAX_INSTANT),
                expires_at=_int(item["expires_at"], "expires_at", MAX_INSTANT),
            ))
        generation = _int(doc.get("generation", 0), "generation", MAX_GENERATION)
        gone = doc.get("revoked", [])
        if not isinstance(gone, list) or len(gone) > MAX_REVOKED:
            raise KeyringError(f"revoked must be a list of at most {MAX_REVOKED} entries")
        revoked: dict[bytes, int] = {}
        for item in gone:
            if not isinstance(item["name"], str):
                raise TypeError("revoked names must be strings")
            revoked[bytes.fromhex(item["name"])] = _int(item["expires_at"], "expires_at",
                                                         MAX_INSTANT)
        return cls(policy, tuple(keys), generation, tuple(revoked.items()))


def validate_keys(keys: Iterable[TicketKey], key_size: int) -> None:
    """Ring invariants (docs/design.md): one size, unique names, no reused material, bounded."""
    names: set[bytes] = set()
    material: set[bytes] = set()
    count = 0
    for k in keys:
        count += 1
        if k.size != key_size:
            raise KeyringError(
                f"key {k.name.hex()} is a {k.size}-byte key in a {key_size}-byte ring"
            )
        if k.name in names:
            raise KeyringError(f"duplicate key name {k.name.hex()}")
        names.add(k.name)
        for part in (k.aes_key, k.hmac_key):
            # GnuTLS CVE-2020-13777 class: the same secret under two names.
            if part in material:
                raise KeyringError(f"key {k.name.hex()} reuses secret material of another key")
            material.add(part)
    if count > MAX_KEYS:
        raise KeyringError(f"a ring holds at most {MAX_KEYS} keys, got {count}")
