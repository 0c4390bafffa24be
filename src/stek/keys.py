"""Ticket keys: the unit the callback hands to OpenSSL.

A key is a random 16-byte *name* (RFC 5077 section 4 ``key_name``; public,
it travels in clear in every ticket), an AES key, an HMAC-SHA256 key and the
three instants of its life (see :mod:`stek.schedule`).

Two sizes exist, named after the key files servers read:

* 80-byte keys (default): AES-256-CBC and a 32-byte HMAC key, the layout of
  OpenSSL's ``SSL_CTRL_SET_TLSEXT_TICKET_KEYS`` and nginx's 80-byte files.
* 48-byte keys: AES-128-CBC and a 16-byte HMAC key (nginx 48-byte files,
  Apache, old peers).  The man page's last paragraph warns that a 128-bit
  ticket key caps every resumed session at 128 bits, whatever the suite.

Key bytes never appear in ``repr``, ``str``, logs or exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import KeyringError

NAME_LEN = 16  # RFC 5077 section 4: opaque key_name[16]
SIZES = (80, 48)
#: AES and HMAC key lengths by key size (bytes).
_PART_LEN = {80: 32, 48: 16}

Random = Callable[[int], bytes]


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class TicketKey:
    """One session ticket encryption key and its schedule (instants in Unix seconds)."""

    name: bytes
    aes_key: bytes = field(compare=False)
    hmac_key: bytes = field(compare=False)
    activates_at: int
    retires_at: int
    expires_at: int

    def __post_init__(self) -> None:
        if len(self.name) != NAME_LEN:
            raise KeyringError(f"key name must be {NAME_LEN} bytes, got {len(self.name)}")
        if len(self.aes_key) not in (16, 32) or len(self.hmac_key) != len(self.aes_key):
            raise KeyringError(
                f"key {self.name.hex()}: AES and HMAC keys must both be 32 bytes "
                f"(80-byte format) or both 16 bytes (48-byte format)"
            )
        for part, label in ((self.name, "name"), (self.aes_key, "AES key"),
                            (self.hmac_key, "HMAC key")):
            # GnuTLS CVE-2020-13777: an all-zero key encrypts tickets readable by anyone.
            if not any(part):
                raise KeyringError(f"key {self.name.hex()}: {label} is all zeros")
        if self.aes_key == self.hmac_key:
            raise KeyringError(f"key {self.name.hex()}: AES and HMAC keys are identical")
        if not self.activates_at <= self.retires_at <= self.expires_at:
            raise KeyringError(
                f"key {self.name.hex()}: needs activates_at <= retires_at <= expires_at"
            )

    @property
    def size(self) -> int:
        """80 or 48: the size of this key in the server key-file formats."""
        return 80 if len(self.aes_key) == 32 else 48

    def __repr__(self) -> str:
        return (
            f"TicketKey(name={self.name.hex()}, size={self.size}, "
            f"activates_at={self.activates_at}, retires_at={self.retires_at}, "
            f"expires_at={self.expires_at})"
        )

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TicketKey):
            return NotImplemented
        return (
            self.name == other.name
            and self.aes_key == other.aes_key
            and self.hmac_key == other.hmac_key
            and self.activates_at == other.activates_at
            and self.retires_at == other.retires_at
            and self.expires_at == other.expires_at
        )

    def __hash__(self) -> int:
        return hash(self.name)


def generate_key(
    *,
    size: int,
    activates_at: int,
    retires_at: int,
    expires_at: int,
    random: Random = os.urandom,
) -> TicketKey:
    """Make a key from the CSPRNG: name, AES and HMAC keys drawn independently.

    The name is random, never derived from the secret material (docs/design.md,
    "Key model"), so publishing it in tickets reveals nothing.
    """
    if size not in SIZES:
        raise KeyringError(f"key size must be 80 or 48 bytes, not {size}")
    part = _PART_LEN[size]
    return TicketKey(
        name=random(NAME_LEN),
        aes_key=random(part),
        hmac_key=random(part),
        activates_at=activates_at,
        retires_at=retires_at,
        expires_at=expires_at,
    )
