"""Keyring snapshots: invariants, the decision, and the serialized form."""

from __future__ import annotations

import json

import pytest

from stek.errors import KeyringError, StoreCorrupt
from stek.keyring import Keyring
from stek.keys import TicketKey, generate_key
from stek.schedule import MAX_KEYS, Answer, Policy


def key(a: int = 0, r: int = 100, e: int = 200, size: int = 80) -> TicketKey:
    return generate_key(size=size, activates_at=a, retires_at=r, expires_at=e)


def test_duplicate_names_are_refused() -> None:
    k = key()
    twin = TicketKey(k.name, key().aes_key, key().hmac_key, 0, 100, 200)
    with pytest.raises(KeyringError, match="duplicate key name"):
        Keyring(Policy(), (k, twin))


def test_reused_material_under_another_name_is_refused() -> None:
    k = key()
    other = key()
    clone = TicketKey(other.name, k.aes_key, other.hmac_key, 0, 100, 200)
    with pytest.raises(KeyringError, match="reuses secret material"):
        Keyring(Policy(), (k, clone))


def test_mixed_sizes_are_refused() -> None:
    with pytest.raises(KeyringError, match="48-byte key in a 80-byte ring"):
        Keyring(Policy(), (key(), key(size=48)))


def test_number_of_keys_is_bounded() -> None:
    with pytest.raises(KeyringError, match=f"at most {MAX_KEYS}"):
        Keyring(Policy(), tuple(key() for _ in range(MAX_KEYS + 1)))


def test_find_takes_any_16_bytes() -> None:
    k = key()
    ring = Keyring(Policy(), (k,))
    assert ring.find(k.name) is k
    assert ring.find(b"\x00" * 16) is None
    assert ring.find(b"") is None
    assert ring.find(b"\xff" * 1000) is None


def test_decide_returns_no_key_for_expired() -> None:
    k = key(0, 100, 200)
    ring = Keyring(Policy(), (k,))
    assert ring.decide(k.name, 50, tls13=False) == (Answer.OK, k)
    assert ring.decide(k.name, 150, tls13=False) == (Answer.RENEW, k)
    assert ring.decide(k.name, 200, tls13=True) == (Answer.NO_TICKET, None)


def test_round_trip_preserves_everything() -> None:
    ring = Keyring(Policy(rotate_every=100, accept_for=600, publish_ahead=10, key_size=48),
                   (key(size=48), key(100, 200, 300, size=48)), generation=7)
    again = Keyring.from_bytes(ring.to_bytes())
    assert again == ring
    assert again.generation == 7
    assert again.policy.key_size == 48


def test_repr_never_shows_key_bytes() -> None:
    k = key()
    text = repr(Keyring(Policy(), (k,)))
    assert k.name.hex() in text
    assert k.aes_key.hex() not in text and k.hmac_key.hex() not in text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\xff garbage", "not JSON"),
        (b"[1, 2]", "no 'stek-keyring' marker"),
        (b'{"hello": "world"}', "no 'stek-keyring' marker"),
        (b'{"format": "stek-keyring", "version": 99}', "version 99"),
        (b'{"format": "stek-keyring", "version": 1}', "invalid keyring"),
    ],
)
def test_corrupt_or_foreign_content_raises_store_corrupt(data: bytes, reason: str) -> None:
    with pytest.raises(StoreCorrupt, match=reason):
        Keyring.from_bytes(data, "ring.json")


def test_invalid_key_in_file_is_named_without_bytes() -> None:
    ring = Keyring(Policy(), (key(),))
    doc = json.loads(ring.to_bytes())
    doc["keys"][0]["aes_key"] = "AAAA"
    with pytest.raises(StoreCorrupt, match="invalid keyring") as info:
        Keyring.from_bytes(json.dumps(doc).encode())
    assert ring.keys[0].hmac_key.hex() not in str(info.value)
