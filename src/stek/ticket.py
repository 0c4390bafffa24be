"""The RFC 5077 section 4 ticket codec, byte-compatible with OpenSSL (sans-IO).

A ticket as OpenSSL builds it, with the key the ticket-key callback chose::

    offset      length  field
    0           16      key_name    RFC 5077 section 4 ``opaque key_name[16]``
    16          16      iv          ``opaque iv[16]``; AES-CBC IV (EVP_MAX_IV_LENGTH)
    32          n*16    encrypted_state  AES-CBC(state) with PKCS#7 padding
    32+n*16     32      mac         HMAC-SHA256 over bytes [0, 32+n*16)

Checked against OpenSSL's own code, not memory:

* ``ssl/statem/statem_srvr.c`` (construct_stateless_ticket): it writes the
  key name, then the IV, then ``EVP_EncryptUpdate`` + ``EVP_EncryptFinal``
  of ``i2d_SSL_SESSION`` (EVP's default PKCS#7 padding), then
  ``HMAC_Update(hctx, macstart, p - macstart)`` where ``macstart`` is the
  key name: the MAC covers name, IV and ciphertext (encrypt-then-MAC).
* ``ssl/t1_lib.c`` (tls_decrypt_ticket): refuses tickets shorter than
  ``TLSEXT_KEYNAME_LENGTH + EVP_MAX_IV_LENGTH`` (32) before the callback, then
  ``eticklen <= 16 + ivlen + mlen`` after it; verifies the MAC with
  ``CRYPTO_memcmp`` over ``etick[0 : eticklen - mlen]`` *before* decrypting;
  ``EVP_DecryptFinal`` failing (bad padding, partial block) means no
  resumption; and the decrypted bytes must be exactly one ``SSL_SESSION``
  (``slen != 0`` after ``d2i_SSL_SESSION`` is refused): see
  :mod:`stek.session` for that last check.

80-byte keys use AES-256-CBC and a 32-byte HMAC key, 48-byte keys AES-128-CBC
and a 16-byte HMAC key (nginx ``ngx_ssl_session_ticket_key_callback``); the
MAC is HMAC-SHA256 (32 bytes) in both cases.

Every way a ticket can be bad raises the one :class:`~stek.errors.InvalidTicket`
(the pyca ``InvalidToken`` habit); its ``reason`` is for operators.  The
codec never does I/O: randomness (the IV) can be injected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import InvalidTicket
from .keyring import Keyring
from .keys import NAME_LEN, TicketKey

#: RFC 5077 section 4: ``opaque iv[16]`` (OpenSSL: EVP_MAX_IV_LENGTH, AES block).
IV_LEN = 16
#: AES block size: the ciphertext is a whole number of blocks (PKCS#7 padding).
BLOCK_LEN = 16
#: RFC 5077 section 4: ``opaque mac[32]``, HMAC-SHA-256.
MAC_LEN = 32
#: Offsets of the fields (RFC 5077 section 4 ``struct ticket``).
IV_OFFSET = NAME_LEN  # 16
STATE_OFFSET = NAME_LEN + IV_LEN  # 32
#: Name, IV, one cipher block (PKCS#7 always adds at least one byte) and MAC.
MIN_LEN = NAME_LEN + IV_LEN + BLOCK_LEN + MAC_LEN  # 80
#: RFC 5077 section 3.3: ``opaque ticket<0..2^16-1>``; nothing longer is a ticket.
MAX_LEN = 0xFFFF

Random = Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class TicketParts:
    """The structure of a ticket; nothing here is secret (it all travels in clear)."""

    name: bytes
    iv: bytes
    ciphertext: bytes = field(repr=False)
    mac: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (f"TicketParts(name={self.name.hex()}, iv={self.iv.hex()}, "
                f"ciphertext={len(self.ciphertext)} bytes, mac={len(self.mac)} bytes)")

    @property
    def signed(self) -> bytes:
        """The bytes the MAC covers: name, IV and ciphertext."""
        return self.name + self.iv + self.ciphertext


@dataclass(frozen=True, slots=True)
class OpenedTicket:
    """A ticket that opened: the key that sealed it, its IV and the session state.

    ``state`` is an ``i2d_SSL_SESSION`` blob holding the session's master (or
    resumption) secret, so it is never part of ``repr``.
    """

    key: TicketKey
    iv: bytes
    state: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (f"OpenedTicket(key={self.key.name.hex()}, iv={self.iv.hex()}, "
                f"state={len(self.state)} bytes)")


class _Prepared:
    """One key's primitives, built once: AES with its key schedule, a keyed HMAC.

    ``hmac`` is a template that is only ever ``copy()``-ed, so one prepared key
    serves many threads.
    """

    __slots__ = ("aes", "hmac", "key")

    def __init__(self, key: TicketKey) -> None:
        self.key = key
        # 32-byte AES key: AES-256-CBC (80-byte rings); 16: AES-128-CBC (48-byte rings).
        self.aes = algorithms.AES(key.aes_key)
        self.hmac = hmac.HMAC(key.hmac_key, hashes.SHA256())

    def __repr__(self) -> str:
        return f"_Prepared(key={self.key.name.hex()})"

    def mac(self, data: bytes) -> hmac.HMAC:
        h = self.hmac.copy()
        h.update(data)
        return h


def seal(key: TicketKey, state: bytes, iv: bytes | None = None, *,
         random: Random = os.urandom) -> bytes:
    """Seal ``state`` (an ``i2d_SSL_SESSION`` blob) under ``key``, as OpenSSL would.

    ``iv`` defaults to 16 fresh random bytes ("The initialization vector iv
    should be a random value", SSL_CTX_set_tlsext_ticket_key_cb(3)); pass it
    to get known-answer bytes.
    """
    if iv is None:
        iv = random(IV_LEN)
    if len(iv) != IV_LEN:
        raise ValueError(f"the IV must be {IV_LEN} bytes, got {len(iv)}")
    state = bytes(state)
    # PKCS#7 (EVP's default padding): 1..16 bytes, each equal to the count.
    pad = BLOCK_LEN - len(state) % BLOCK_LEN
    if STATE_OFFSET + len(state) + pad + MAC_LEN > MAX_LEN:
        raise ValueError(f"a {len(state)}-byte state does not fit in a TLS ticket "
                         f"(RFC 5077 section 3.3: at most {MAX_LEN} bytes)")
    prepared = _Prepared(key)
    enc = Cipher(prepared.aes, modes.CBC(iv)).encryptor()
    ciphertext = enc.update(state + bytes((pad,)) * pad) + enc.finalize()
    signed = key.name + iv + ciphertext
    return signed + prepared.mac(signed).finalize()


def parse(ticket: bytes) -> TicketParts:
    """Split a ticket into its fields (structure only: no key, no MAC check).

    Raises :class:`InvalidTicket` when the length cannot be that of an
    OpenSSL ticket: shorter than name + IV + one block + MAC, longer than a
    TLS ticket, or a ciphertext that is not a whole number of AES blocks
    (truncated, or trailing bytes after the MAC).
    """
    data = bytes(ticket)
    n = _check_length(data)
    return TicketParts(
        name=data[:IV_OFFSET],
        iv=data[IV_OFFSET:STATE_OFFSET],
        ciphertext=data[STATE_OFFSET:n - MAC_LEN],
        mac=data[n - MAC_LEN:],
    )


def _check_length(data: bytes) -> int:
    n = len(data)
    if n < MIN_LEN:
        raise InvalidTicket(
            f"malformed: {n} bytes is too short for a ticket (key name 16 + IV 16 + "
            f"at least one 16-byte block + MAC 32 = {MIN_LEN})"
        )
    if n > MAX_LEN:
        raise InvalidTicket(f"malformed: {n} bytes is longer than any TLS ticket ({MAX_LEN})")
    body = n - STATE_OFFSET - MAC_LEN
    if body % BLOCK_LEN:
        raise InvalidTicket(
            f"malformed: the encrypted state is {body} bytes, not a whole number of "
            f"16-byte AES blocks (truncated ticket or trailing garbage)"
        )
    return n


def _find(keys: Keyring | Iterable[TicketKey], name: bytes) -> TicketKey | None:
    if isinstance(keys, Keyring):
        return keys.find(name)
    # Key names are public (they travel in clear): no need for constant time.
    for k in keys:
        if k.name == name:
            return k
    return None


def _open(data: bytes, prepared: _Prepared) -> bytes:
    """MAC check, then decryption, of a length-checked ticket ``data``."""
    end = len(data) - MAC_LEN
    # Encrypt-then-MAC: authenticate name, IV and ciphertext before touching
    # the ciphertext (tls_decrypt_ticket: CRYPTO_memcmp before
    # EVP_DecryptUpdate).  HMAC.verify compares in constant time.
    try:
        prepared.mac(data[:end]).verify(data[end:])
    except InvalidSignature:
        raise InvalidTicket(
            f"bad MAC: the ticket was altered, or sealed by another key named "
            f"{prepared.key.name.hex()}"
        ) from None
    dec = Cipher(prepared.aes, modes.CBC(data[IV_OFFSET:STATE_OFFSET])).decryptor()
    padded = dec.update(data[STATE_OFFSET:end]) + dec.finalize()
    # PKCS#7, as EVP_DecryptFinal checks it.  Past the MAC only the key's
    # holder can have produced these bytes, so a timing difference here
    # tells an attacker nothing (no padding oracle without a valid MAC).
    pad = padded[-1]
    if not 1 <= pad <= BLOCK_LEN or padded[-pad:] != bytes((pad,)) * pad:
        raise InvalidTicket("bad padding: the MAC is valid but the decrypted state "
                            "does not end in PKCS#7 padding")
    return padded[:-pad]


def open_parts(parts: TicketParts, key: TicketKey) -> bytes:
    """Verify and decrypt ``parts`` with ``key``: the state, or :class:`InvalidTicket`."""
    if parts.name != key.name:
        raise InvalidTicket(f"unknown key: the ticket names {parts.name.hex()}, "
                            f"not {key.name.hex()}")
    return _open(parts.signed + parts.mac, _Prepared(key))


def open_ticket(ticket: bytes, keys: Keyring | Iterable[TicketKey] | Opener) -> OpenedTicket:
    """Open a ticket with whichever of ``keys`` it names.

    The key's schedule is not consulted here (the codec has no clock): use
    :func:`stek.inspection.inspect_ticket` for the server's verdict at an instant.
    Pass an :class:`Opener` to open many tickets without re-deriving each
    key's primitives (a :class:`~stek.keyring.Keyring` keeps one for as long
    as it lives).  Raises :class:`InvalidTicket` for any bad ticket.
    """
    if isinstance(keys, Opener):
        return keys.open(ticket)
    if isinstance(keys, Keyring):
        # An immutable snapshot: prepare its keys once, for as long as it lives.
        opener = keys._derived.get("opener")
        if opener is None:
            opener = keys._derived.setdefault("opener", Opener(keys))
        return cast(Opener, opener).open(ticket)
    data = bytes(ticket)
    _check_length(data)
    key = _find(keys, data[:IV_OFFSET])
    if key is None:
        raise InvalidTicket(f"unknown key: no key named {data[:IV_OFFSET].hex()}")
    return OpenedTicket(key, data[IV_OFFSET:STATE_OFFSET], _open(data, _Prepared(key)))


class Opener:
    """Keys prepared once, for opening many tickets (benchmarks, batch inspection).

    It holds the keys' primitives: keep it no longer than the ring it came
    from, or dropped keys outlive their window in memory.
    """

    __slots__ = ("_by_name",)

    def __init__(self, keys: Keyring | Iterable[TicketKey]) -> None:
        self._by_name = {k.name: _Prepared(k) for k in keys}

    def __repr__(self) -> str:
        return f"Opener(keys=[{', '.join(n.hex() for n in self._by_name)}])"

    def open(self, ticket: bytes) -> OpenedTicket:
        """Same as :func:`open_ticket` with these keys."""
        data = bytes(ticket)
        _check_length(data)
        prepared = self._by_name.get(data[:IV_OFFSET])
        if prepared is None:
            raise InvalidTicket(f"unknown key: no key named {data[:IV_OFFSET].hex()}")
        return OpenedTicket(prepared.key, data[IV_OFFSET:STATE_OFFSET], _open(data, prepared))


__all__ = [
    "IV_LEN",
    "MAC_LEN",
    "MAX_LEN",
    "MIN_LEN",
    "OpenedTicket",
    "Opener",
    "TicketParts",
    "open_parts",
    "open_ticket",
    "parse",
    "seal",
]
