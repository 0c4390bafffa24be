"""stek.scope and stek.trust: the derivations other implementations must reproduce."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stek.errors import ConfigError
from stek.keyring import Keyring
from stek.keys import TicketKey, generate_key
from stek.schedule import Policy
from stek.scope import check_scope, derive_key, scoped
from stek.trust import trust_session_id_context

DOC = Path(__file__).resolve().parents[2] / "docs" / "trust.md"


def doc_vector(tag: str) -> dict[str, bytes]:
    """The ``name``/``hmac_key``/``aes_key`` lines of the block after ``<!-- tag -->``."""
    text = DOC.read_text()
    block = re.search(rf"<!-- {tag} -->\n```\n(.*?)```", text, re.S)
    assert block is not None, f"docs/trust.md has no {tag} block"
    return {k: bytes.fromhex(v) for k, v in re.findall(r"^(\w+)\s+([0-9a-f]+)$", block[1], re.M)}


@pytest.mark.parametrize("size", [80, 48])
def test_the_documented_vector(size: int) -> None:
    n = 32 if size == 80 else 16
    key = TicketKey(bytes(range(1, 17)), bytes(range(0x20, 0x20 + n)),
                    bytes(range(0x40, 0x40 + n)), 1_700_000_000, 1_700_003_600, 1_700_043_200)
    got = derive_key(key, "internal")
    want = doc_vector(f"scope-vector-{size}")
    assert (got.name, got.hmac_key, got.aes_key) == (want["name"], want["hmac_key"],
                                                     want["aes_key"])
    assert (got.activates_at, got.retires_at, got.expires_at) == \
        (key.activates_at, key.retires_at, key.expires_at)


def ring(n: int = 3, size: int = 80) -> Keyring:
    keys = [generate_key(size=size, activates_at=1000 * i, retires_at=1000 * i + 1000,
                         expires_at=1000 * i + 2000) for i in range(n)]
    return Keyring(Policy(rotate_every=1000, accept_for=1000, publish_ahead=10,
                          key_size=size), tuple(keys), 7)


def test_a_scoped_ring_keeps_policy_generation_and_windows() -> None:
    r = ring()
    s = scoped(r, "a")
    assert s.policy == r.policy and s.generation == r.generation
    assert [(k.activates_at, k.retires_at, k.expires_at) for k in s.keys] == \
        [(k.activates_at, k.retires_at, k.expires_at) for k in r.keys]
    assert scoped(r, "a") is s  # cached on the snapshot
    assert scoped(r, None) is r


def test_scopes_share_no_name_and_no_material() -> None:
    r = ring(5)
    names: set[bytes] = set()
    material: set[bytes] = set()
    for view in (r, scoped(r, "a"), scoped(r, "b"), scoped(r, "A")):
        for k in view.keys:
            assert k.name not in names
            names.add(k.name)
            for part in (k.aes_key, k.hmac_key):
                assert part not in material
                material.add(part)


@given(st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True))
def test_every_valid_scope_derives_a_valid_ring(scope: str) -> None:
    s = scoped(ring(2, 48), scope)
    assert len(s) == 2 and all(k.size == 48 for k in s.keys)


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "é", "a/b", "a\x00", "a:b"])
def test_bad_scopes_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="a scope is 1 to 64 characters"):
        check_scope(bad)


def test_the_trust_context_is_documented_and_order_free_only_for_client_cas() -> None:
    ctx = trust_session_id_context([b"leaf", b"intermediate"], 2, [b"ca-two", b"ca-one"])
    assert len(ctx) == 32  # SSL_MAX_SID_CTX_LENGTH
    assert ctx == trust_session_id_context([b"leaf", b"intermediate"], 2, [b"ca-one", b"ca-two"])
    assert ctx != trust_session_id_context([b"intermediate", b"leaf"], 2, [b"ca-one", b"ca-two"])
    assert ctx != trust_session_id_context([b"leaf", b"intermediate"], 1, [b"ca-one", b"ca-two"])
    assert ctx != trust_session_id_context([b"leaf", b"intermediate"], 2, [b"ca-one"])
    # Without client authentication the CAs loaded play no part.
    assert trust_session_id_context([b"leaf"], 0, [b"x"]) == \
        trust_session_id_context([b"leaf"], 0, [])
    # Length-prefixed items: a split in another place is another configuration.
    assert trust_session_id_context([b"ab", b"c"], 0, []) != \
        trust_session_id_context([b"a", b"bc"], 0, [])
    assert ctx.hex() == "3f9ba884dce01ae14f88901ef259500711c06375a66361e6b8750839c06bfef5"
