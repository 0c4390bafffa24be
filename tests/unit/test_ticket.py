"""The RFC 5077 ticket codec (stek.ticket): known answers, every failure, properties.

Real-handshake interop (OpenSSL-issued tickets opened here, codec-sealed
tickets accepted by OpenSSL) is in test_ticket_interop.py.
"""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.ticket_vectors import IV, NAME, SIZES, STATE, VECTORS, vector_key
from helpers.tickets import ring_of
from stek.errors import InvalidTicket
from stek.keys import TicketKey, generate_key
from stek.ticket import (
    MAC_LEN,
    MIN_LEN,
    Opener,
    open_parts,
    open_ticket,
    parse,
    seal,
)


def random_key(size: int = 80) -> TicketKey:
    return generate_key(size=size, activates_at=0, retires_at=100, expires_at=200)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


def reseal_raw(key: TicketKey, iv: bytes, plaintext_blocks: bytes) -> bytes:
    """A ticket with a valid MAC over arbitrary (unpadded) ciphertext: only the key holder
    could make one, so it reaches the padding check."""
    enc = Cipher(algorithms.AES(key.aes_key), modes.CBC(iv)).encryptor()
    signed = key.name + iv + enc.update(plaintext_blocks) + enc.finalize()
    h = hmac.HMAC(key.hmac_key, hashes.SHA256())
    h.update(signed)
    return signed + h.finalize()


# -- known answers ---------------------------------------------------------------

@SIZES
def test_seal_gives_the_pinned_ticket(size: int) -> None:
    """Pinned key, IV and state give the pinned bytes (80: AES-256; 48: AES-128)."""
    assert seal(vector_key(size), STATE, IV).hex() == VECTORS[size][2]


@SIZES
def test_pinned_ticket_opens_to_the_pinned_state(size: int) -> None:
    """The pinned ticket opens to the pinned state, IV and key."""
    key = vector_key(size)
    opened = open_ticket(bytes.fromhex(VECTORS[size][2]), [key])
    assert (opened.state, opened.iv, opened.key) == (STATE, IV, key)


def test_seal_draws_a_fresh_iv_by_default() -> None:
    """Without an IV, each seal uses 16 new random bytes (from the injected source)."""
    key = random_key()
    a, b = seal(key, STATE), seal(key, STATE)
    assert a[16:32] != b[16:32]
    pinned = seal(key, STATE, random=lambda n: b"\x07" * n)
    assert parse(pinned).iv == b"\x07" * 16


def test_seal_rejects_a_wrong_iv_length() -> None:
    """An IV is exactly 16 bytes."""
    with pytest.raises(ValueError, match="16 bytes"):
        seal(random_key(), STATE, b"\x00" * 12)


def test_seal_rejects_a_state_too_long_for_tls() -> None:
    """RFC 5077 section 3.3: a ticket is at most 2^16-1 bytes."""
    with pytest.raises(ValueError, match="does not fit"):
        seal(random_key(), b"x" * 65500, IV)


# -- structure ---------------------------------------------------------------------

def test_parse_splits_the_fields() -> None:
    """name 16 | IV 16 | ciphertext | MAC 32 (RFC 5077 section 4)."""
    ticket = bytes.fromhex(VECTORS[80][2])
    parts = parse(ticket)
    assert parts.name == NAME and parts.iv == IV
    assert parts.mac == ticket[-MAC_LEN:]
    assert parts.ciphertext == ticket[32:-MAC_LEN]
    assert len(parts.ciphertext) % 16 == 0


@pytest.mark.parametrize("length", [0, 1, 16, 31, 32, 47, 48, 63, 64, 79])
def test_too_short_is_malformed(length: int) -> None:
    """Below name + IV + one block + MAC (80 bytes) nothing can be a ticket."""
    with pytest.raises(InvalidTicket, match="too short"):
        parse(b"\x01" * length)


@pytest.mark.parametrize("extra", [1, 15, 17])
def test_trailing_garbage_is_malformed(extra: int) -> None:
    """Bytes after the MAC leave a ciphertext that is not whole AES blocks."""
    ticket = bytes.fromhex(VECTORS[80][2]) + b"\x00" * extra
    with pytest.raises(InvalidTicket, match="whole number"):
        open_ticket(ticket, [vector_key(80)])


def test_trailing_whole_block_fails_the_mac() -> None:
    """16 bytes appended keep the alignment but move the MAC: bad MAC."""
    ticket = bytes.fromhex(VECTORS[80][2]) + b"\x00" * 16
    with pytest.raises(InvalidTicket, match="bad MAC"):
        open_ticket(ticket, [vector_key(80)])


def test_longer_than_a_tls_ticket_is_malformed() -> None:
    """More than 65535 bytes cannot have come from a TLS extension."""
    with pytest.raises(InvalidTicket, match="longer than any TLS ticket"):
        parse(b"\x00" * (0xFFFF + 17))


def test_parts_repr_shows_no_ciphertext() -> None:
    """TicketParts' repr names the key and lengths only."""
    parts = parse(bytes.fromhex(VECTORS[80][2]))
    assert parts.ciphertext.hex() not in repr(parts)
    assert NAME.hex() in repr(parts)


# -- opening: every failure is InvalidTicket -----------------------------------------

def test_unknown_key_is_rejected() -> None:
    """A name no given key has: 'unknown key'."""
    with pytest.raises(InvalidTicket, match="unknown key"):
        open_ticket(bytes.fromhex(VECTORS[80][2]), [random_key()])


def test_open_finds_the_key_in_a_keyring() -> None:
    """A Keyring is looked up by name, like the callback does."""
    key, other = random_key(), random_key()
    ring = ring_of(other, key)
    assert open_ticket(seal(key, STATE), ring).key == key


def test_opener_opens_like_open_ticket() -> None:
    """An Opener (keys prepared once) gives the same answers."""
    key = random_key()
    opener = Opener([key])
    ticket = seal(key, STATE)
    assert opener.open(ticket) == open_ticket(ticket, [key])
    assert open_ticket(ticket, opener).state == STATE
    with pytest.raises(InvalidTicket, match="unknown key"):
        opener.open(seal(random_key(), STATE))
    assert key.aes_key.hex() not in repr(opener)


@pytest.mark.parametrize("where", ["mac", "iv", "ciphertext"])
def test_any_flipped_bit_fails_the_mac(where: str) -> None:
    """Encrypt-then-MAC: the MAC covers name, IV and ciphertext."""
    key = vector_key(80)
    ticket = bytes.fromhex(VECTORS[80][2])
    index = {"mac": len(ticket) - 1, "iv": 20, "ciphertext": 40}[where]
    with pytest.raises(InvalidTicket, match="bad MAC"):
        open_ticket(flip(ticket, index), [key])


def test_a_key_with_the_same_name_but_other_material_fails_the_mac() -> None:
    """Another ring's key that happens to share the name cannot open it."""
    impostor = TicketKey(NAME, b"\x11" * 32, b"\x22" * 32, 0, 1, 2)
    with pytest.raises(InvalidTicket, match="bad MAC"):
        open_ticket(bytes.fromhex(VECTORS[80][2]), [impostor])


@pytest.mark.parametrize("last_block", [
    b"\x00" * 16,                 # pad byte 0
    b"A" * 15 + b"\x11",          # pad byte 17 > block size
    b"A" * 13 + b"\x02\x03\x03",  # inconsistent padding bytes
])
def test_bad_padding_under_a_valid_mac_is_rejected(last_block: bytes) -> None:
    """EVP_DecryptFinal's PKCS#7 check: a valid MAC over bad padding is still refused."""
    key = random_key()
    with pytest.raises(InvalidTicket, match="bad padding"):
        open_ticket(reseal_raw(key, IV, b"B" * 16 + last_block), [key])


def test_open_parts_checks_the_name() -> None:
    """open_parts refuses a key that is not the one the ticket names."""
    with pytest.raises(InvalidTicket, match="unknown key"):
        open_parts(parse(bytes.fromhex(VECTORS[80][2])), random_key())


def test_opened_ticket_repr_hides_the_state() -> None:
    """The state carries the session secret: repr gives its length only."""
    opened = open_ticket(bytes.fromhex(VECTORS[80][2]), [vector_key(80)])
    assert "5a5a5a" not in repr(opened) and "state=103 bytes" in repr(opened)
    assert VECTORS[80][0].hex() not in repr(opened)


def test_exception_never_carries_key_bytes() -> None:
    """InvalidTicket reasons name keys by their public name only."""
    key = vector_key(80)
    ticket = flip(bytes.fromhex(VECTORS[80][2]), 50)
    with pytest.raises(InvalidTicket) as info:
        open_ticket(ticket, [key])
    text = str(info.value) + repr(info.value)
    assert key.aes_key.hex() not in text and key.hmac_key.hex() not in text


# -- properties (Hypothesis) -----------------------------------------------------------

KEYS = {size: random_key(size) for size in (80, 48)}


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([80, 48]), state=st.binary(max_size=2048),
       iv=st.binary(min_size=16, max_size=16))
def test_seal_then_open_round_trips(size: int, state: bytes, iv: bytes) -> None:
    """open(seal(state)) == state, with the IV and key used, for both sizes."""
    key = KEYS[size]
    ticket = seal(key, state, iv)
    assert len(ticket) == 16 + 16 + (len(state) // 16 + 1) * 16 + 32
    opened = open_ticket(ticket, [key])
    assert (opened.state, opened.iv, opened.key) == (state, iv, key)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=600))
def test_any_bytes_open_or_raise_invalid_ticket(data: bytes) -> None:
    """Whatever bytes a peer sends: an opened ticket or InvalidTicket, never another error."""
    keys = list(KEYS.values())
    with contextlib.suppress(InvalidTicket):
        open_ticket(data, keys)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=300))
def test_any_bytes_under_a_known_name_raise_invalid_ticket(data: bytes) -> None:
    """Attacker-chosen bytes behind a real key name never open (the MAC stops them)."""
    key = KEYS[80]
    with pytest.raises(InvalidTicket):
        open_ticket(key.name + data, [key])


@settings(max_examples=300, deadline=None)
@given(state=st.binary(max_size=256), index=st.integers(min_value=0),
       mask=st.integers(min_value=1, max_value=255))
def test_any_corruption_of_a_sealed_ticket_is_rejected(state: bytes, index: int,
                                                        mask: int) -> None:
    """Changing any bit of a sealed ticket makes it fail (name: unknown key; else MAC)."""
    key = KEYS[80]
    ticket = seal(key, state)
    with pytest.raises(InvalidTicket):
        open_ticket(flip(ticket, index % len(ticket), mask), [key])


@settings(max_examples=200, deadline=None)
@given(state=st.binary(max_size=256), cut=st.integers(min_value=1, max_value=64))
def test_truncated_tickets_are_rejected(state: bytes, cut: int) -> None:
    """Dropping bytes from the end never yields a ticket that opens."""
    key = KEYS[48]
    ticket = seal(key, state)
    with pytest.raises(InvalidTicket):
        open_ticket(ticket[:-cut], [key])


def test_min_len_is_one_block_plus_overhead() -> None:
    """The smallest ticket (empty state) is name + IV + one padding block + MAC."""
    assert len(seal(random_key(), b"", IV)) == MIN_LEN == 80


def test_a_keyring_prepares_its_keys_once_and_only_for_its_own_life() -> None:
    """open_ticket(ticket, Keyring) keeps the prepared keys on that snapshot only."""
    from stek.keyring import Keyring
    from stek.keys import generate_key
    from stek.schedule import Plan, Policy
    from stek.ticket import open_ticket, seal

    key = generate_key(size=80, activates_at=0, retires_at=1, expires_at=2)
    ring = Keyring(Policy(), (key,))
    ticket = seal(key, b"state")
    assert open_ticket(ticket, ring).state == b"state"
    opener = ring._derived["opener"]
    assert open_ticket(ticket, ring).state == b"state"
    assert ring._derived["opener"] is opener
    newer = ring.apply(Plan(add=(generate_key(size=80, activates_at=0, retires_at=1,
                                               expires_at=2),)))
    assert newer._derived == {} and newer == Keyring.from_bytes(newer.to_bytes())
