"""SSL_SESSION decoding (stek.session): against real sessions and OpenSSL's own reader."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import session_server
from helpers.certs import TLS_VERSIONS, client_context
from helpers.ticket_vectors import STATE
from helpers.tls_peers import connect
from stek import session as sessions
from stek.errors import InvalidTicket
from stek.inspection import session_of, ticket_of

# Fixtures shared with the other half of these tests (tests/unit or tests/integration).
server = session_server.server

PROTOCOL = {ssl.TLSVersion.TLSv1_2: (0x0303, "TLSv1.2"),
            ssl.TLSVersion.TLSv1_3: (0x0304, "TLSv1.3")}


# -- fixed input -------------------------------------------------------------------------

def test_decodes_a_pinned_tls13_session() -> None:
    """Every field of a hand-built i2d_SSL_SESSION comes out as encoded."""
    info = sessions.decode(STATE)
    assert (info.protocol_id, info.protocol) == (0x0304, "TLSv1.3")
    assert (info.cipher_id, info.cipher) == (0x1302, "TLS_AES_256_GCM_SHA384")
    assert (info.created_at, info.timeout, info.expires_at) == (1700000000, 3600, 1700003600)
    assert info.secret_len == 48 and info.sid_ctx == b"Python\x00"
    assert (info.age_add, info.max_early_data) == (0x01020304, 0)
    assert info.sni is None and info.alpn is None and not info.peer_certificate
    assert info.tls13 and info.kex_group is None


def test_secret_is_only_a_length() -> None:
    """The master secret appears in neither repr nor the JSON form."""
    info = sessions.decode(STATE)
    secret = ("5a" * 48)
    assert secret not in repr(info).lower()
    assert secret not in json.dumps(info.to_dict()).lower()
    assert info.to_dict()["master_secret_len"] == 48


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: d + b"\x00", "trailing bytes"),
    (lambda d: d[:4] + b"\x02" + d[5:], "version 2"),  # SSL_SESSION_ASN1_VERSION
    (lambda d: d[:7] + b"\x07" + d[8:], "unsupported protocol"),  # 0x0704
    (lambda d: d[:-1], "not an OpenSSL SSL_SESSION"),
    (lambda d: b"\x04\x03abc", "not an OpenSSL SSL_SESSION"),
])
def test_malformed_sessions_raise_invalid_ticket(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    """What d2i_SSL_SESSION refuses (and leftovers, refused by tls_decrypt_ticket)."""
    with pytest.raises(InvalidTicket, match=reason):
        sessions.decode(mutate(STATE))


def test_fuzz_found_input_raises_invalid_ticket() -> None:
    """Regression (atheris): asn1crypto raised AttributeError on this DER; now InvalidTicket."""
    data = base64.b64decode(
        "MGUCAQECAgMEBAITAgQABDBaWlpaWlpaWlpaWlpaBQAAAAAAAABaWlpaWlpaWlpaWgBaWlpaP0lJSUlJSUlJSUlJ"
        "JElJSa+vr6+vr6+vr6+vr6+vr6+vr6+vr6+vr6+vr6+vr6+vr6+vr6+vr69JSUlJSUlJSUlJSUlJSUlJSUkA"
    )
    with pytest.raises(InvalidTicket, match="not an OpenSSL SSL_SESSION"):
        sessions.decode(data)


def test_cipher_code_must_be_two_bytes() -> None:
    """SSL_R_CIPHER_CODE_WRONG_LENGTH."""
    parsed = sessions._load(STATE)
    parsed["cipher"] = b"\x13\x02\x00"
    with pytest.raises(InvalidTicket, match="cipher code"):
        sessions.decode(parsed.dump())


def test_pem_round_trip() -> None:
    """to_pem / from_pem use the PEM_write_SSL_SESSION label and give the DER back."""
    pem = sessions.to_pem(STATE)
    assert pem.startswith("-----BEGIN SSL SESSION PARAMETERS-----\n")
    assert sessions.is_pem(pem) and sessions.from_pem(pem) == STATE


def test_pem_without_a_block_is_rejected() -> None:
    """A truncated PEM block is an InvalidTicket, not a crash."""
    with pytest.raises(InvalidTicket, match="PEM"):
        sessions.from_pem("-----BEGIN SSL SESSION PARAMETERS-----\nMIIB")


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=400))
def test_any_bytes_decode_or_raise_invalid_ticket(data: bytes) -> None:
    """Whatever the bytes, decode() gives a SessionInfo or InvalidTicket, nothing else."""
    with contextlib.suppress(InvalidTicket):
        sessions.decode(data)


@settings(max_examples=500, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(STATE) - 1),
       value=st.integers(min_value=0, max_value=255))
def test_any_byte_change_decodes_or_raises_invalid_ticket(index: int, value: int) -> None:
    """Near-valid DER (one byte changed) reaches deep into the parser: same invariant."""
    data = bytearray(STATE)
    data[index] = value
    with contextlib.suppress(InvalidTicket):
        sessions.decode(bytes(data))


# -- real sessions -------------------------------------------------------------------------

@TLS_VERSIONS
def test_python_client_session_decodes(server, certs, tls_version) -> None:  # type: ignore[no-untyped-def]
    """A Python client's SSLSession decodes to what ssl reports about it."""
    cctx = client_context(certs, tls_version)
    r = connect(server.port, cctx)
    assert r.session is not None
    info = session_of(r.session)
    assert (info.protocol_id, info.protocol) == PROTOCOL[tls_version]
    assert (info.created_at, info.timeout) == (r.session.time, r.session.timeout)
    assert info.session_id == r.session.id
    ids = {c["id"] & 0xFFFF: c["name"] for c in cctx.get_ciphers()}
    assert info.cipher_id in ids
    assert info.peer_certificate and info.peer_subject and "localhost" in info.peer_subject
    ticket = ticket_of(r.session)
    assert ticket is not None and info.ticket_len == len(ticket)
    assert info.lifetime_hint == r.session.ticket_lifetime_hint
