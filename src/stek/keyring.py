"""An immutable snapshot of a ring: its policy, its keys, the callback's answers.

A :class:`Keyring` is what every adapter passes around: stores read and write
it, the callback reads the latest one from memory (no I/O on the handshake
path), exporters lay it out for other servers.  It validates the invariants
of DESIGN.md on construction, so an invalid ring can never be installed.

The serialized form (``to_bytes`` / ``from_bytes``) is a small JSON document;
stores wrap it (the file store as is, with 0600 permissions; shared stores
sealed under a key-encryption key).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import KeyringError, StoreCorrupt
from .keys import TicketKey
from .schedule import (
    MAX_KEYS,
    Answer,
    Plan,
    Policy,
    State,
    decrypt_answer,
    encrypting_key,
    state_of,
)

FORMAT = "stek-keyring"
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True, repr=False)
class Keyring:
    """Policy + keys (+ a generation counter bumped on every change)."""

    policy: Policy
    keys: tuple[TicketKey, ...] = ()
    generation: int = 0
    _by_name: Mapping[bytes, TicketKey] = field(init=False, compare=False)
    #: Values derived from this snapshot by other modules (the codec's prepared
    #: primitives): they live exactly as long as the ring they came from.
    _derived: dict[str, Any] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        keys = tuple(sorted(self.keys, key=lambda k: (k.activates_at, k.name)))
        object.__setattr__(self, "keys", keys)
        validate_keys(keys, self.policy.key_size)
        object.__setattr__(self, "_by_name", {k.name: k for k in keys})
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

    def state(self, key: TicketKey, now: float) -> State:
        return state_of(key, now)

    # -- evolution ------------------------------------------------------------------
    def apply(self, change: Plan) -> Keyring:
        if change.empty:
            return self
        dropped = set(change.drop)
        keys = [k for k in self.keys if k.name not in dropped] + list(change.add)
        return Keyring(self.policy, tuple(keys), self.generation + 1)

    def with_policy(self, policy: Policy) -> Keyring:
        return Keyring(policy, self.keys, self.generation + 1)

    # -- serialization ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
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

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "keyring") -> Keyring:
        """Parse a serialized ring; anything else raises :class:`StoreCorrupt`.

        Messages name the problem and never quote the content (it may be keys).
        """
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StoreCorrupt(f"{where}: not a stek keyring (not JSON)") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise StoreCorrupt(f"{where}: not a stek keyring (no '{FORMAT}' marker)")
        if doc.get("version") != FORMAT_VERSION:
            raise StoreCorrupt(
                f"{where}: keyring format version {doc.get('version')!r} is not supported "
                f"(this stek reads version {FORMAT_VERSION})"
            )
        try:
            pol = doc["policy"]
            policy = Policy(
                rotate_every=int(pol["rotate_every"]),
                accept_for=int(pol["accept_for"]),
                publish_ahead=int(pol["publish_ahead"]),
                key_size=int(pol.get("key_size", 80)),
            )
            keys = tuple(
                TicketKey(
                    name=bytes.fromhex(item["name"]),
                    aes_key=base64.b64decode(item["aes_key"], validate=True),
                    hmac_key=base64.b64decode(item["hmac_key"], validate=True),
                    activates_at=int(item["activates_at"]),
                    retires_at=int(item["retires_at"]),
                    expires_at=int(item["expires_at"]),
                )
                for item in doc["keys"]
            )
            return cls(policy, keys, int(doc.get("generation", 0)))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            # KeyringError is a ValueError: its message names the invariant.
            detail = str(exc) if isinstance(exc, KeyringError) else type(exc).__name__
            raise StoreCorrupt(f"{where}: invalid keyring ({detail})") from None


def validate_keys(keys: Iterable[TicketKey], key_size: int) -> None:
    """Ring invariants (DESIGN.md): one size, unique names, no reused material, bounded."""
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
