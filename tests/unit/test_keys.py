"""TicketKey invariants (DESIGN.md key model) and secrecy of its bytes."""

from __future__ import annotations

import os

import pytest

from stek.errors import KeyringError
from stek.keys import TicketKey, generate_key


def make(**over: object) -> TicketKey:
    fields: dict[str, object] = dict(name=os.urandom(16), aes_key=os.urandom(32),
                                     hmac_key=os.urandom(32), activates_at=0, retires_at=10,
                                     expires_at=20)
    fields.update(over)
    return TicketKey(**fields)  # type: ignore[arg-type]


def test_generate_uses_injected_randomness_for_each_part() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes([len(calls)]) * n

    k = generate_key(size=80, activates_at=0, retires_at=1, expires_at=2, random=rng)
    assert calls == [16, 32, 32]
    assert (k.name, k.aes_key, k.hmac_key) == (b"\x01" * 16, b"\x02" * 32, b"\x03" * 32)
    assert k.size == 80


def test_generate_48_byte_key_has_16_byte_parts() -> None:
    k = generate_key(size=48, activates_at=0, retires_at=1, expires_at=2)
    assert (len(k.aes_key), len(k.hmac_key), k.size) == (16, 16, 48)


def test_generate_rejects_other_sizes() -> None:
    with pytest.raises(KeyringError, match="80 or 48"):
        generate_key(size=64, activates_at=0, retires_at=1, expires_at=2)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"name": os.urandom(15)}, "name must be 16"),
        ({"aes_key": os.urandom(24)}, "must both be 32 bytes"),
        ({"hmac_key": os.urandom(16)}, "must both be 32 bytes"),
        ({"name": bytes(16)}, "name is all zeros"),
        ({"aes_key": bytes(32)}, "AES key is all zeros"),
        ({"hmac_key": bytes(32)}, "HMAC key is all zeros"),
        ({"retires_at": 30}, "activates_at <= retires_at <= expires_at"),
        ({"activates_at": 11}, "activates_at <= retires_at <= expires_at"),
    ],
)
def test_invalid_keys_are_refused(over: dict[str, object], message: str) -> None:
    with pytest.raises(KeyringError, match=message):
        make(**over)


def test_identical_aes_and_hmac_keys_are_refused() -> None:
    same = os.urandom(32)
    with pytest.raises(KeyringError, match="identical"):
        make(aes_key=same, hmac_key=same)


def test_repr_and_str_never_show_key_bytes() -> None:
    k = make()
    for text in (repr(k), str(k), f"{k}"):
        assert k.name.hex() in text
        for secret in (k.aes_key, k.hmac_key):
            assert secret.hex() not in text
            assert repr(secret) not in text


def test_error_messages_never_show_key_bytes() -> None:
    secret = os.urandom(32)
    with pytest.raises(KeyringError) as info:
        make(aes_key=secret, hmac_key=secret)
    assert secret.hex() not in str(info.value)
