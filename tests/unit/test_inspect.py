"""stek.inspection and ``stek inspect``: the verdict, its reason, and that it matches OpenSSL."""

from __future__ import annotations

import base64
import json
import ssl

import pytest

from helpers.certs import TLS_VERSIONS, client_context, server_context
from helpers.ticket_vectors import STATE
from helpers.tickets import (
    key_in_state,
    now,
    ring_of,
    stek_server,
)
from helpers.tls_peers import TLSServer, connect
from stek import session as sessions
from stek.errors import InvalidTicket
from stek.inspection import Verdict, inspect_session, inspect_ticket, read_ticket, ticket_of
from stek.schedule import Answer, State
from stek.ticket import seal

NOW = 1_800_000_000


def state_at(t: int, *, tls13: bool = True, timeout: int = 3600) -> bytes:
    """The pinned session, re-timed to ``t`` (TLS 1.3, or switched to TLS 1.2)."""
    parsed = sessions._load(STATE)
    parsed["time"] = t
    parsed["timeout"] = timeout
    if not tls13:
        parsed["ssl_version"] = 0x0303
        parsed["cipher"] = b"\xc0\x2c"
    return bytes(parsed.dump())


# -- the verdict (pure: ring and clock passed in) ----------------------------------------

@pytest.mark.parametrize(("state", "tls13", "verdict", "answer"), [
    ("active", False, Verdict.RESUME, Answer.OK),
    ("active", True, Verdict.RESUME, Answer.RENEW),  # TLS 1.3 always re-issues (nginx #1892)
    ("pending", False, Verdict.RESUME, Answer.OK),
    ("decrypt-only", False, Verdict.RESUME_AND_RENEW, Answer.RENEW),
    ("decrypt-only", True, Verdict.RESUME_AND_RENEW, Answer.RENEW),
])
def test_verdict_follows_the_lifecycle_table(state: str, tls13: bool, verdict: Verdict,
                                             answer: Answer) -> None:
    """Pending/active resume, decrypt-only resumes and renews; the answer is the callback's."""
    key = key_in_state(state, NOW)
    result = inspect_ticket(seal(key, state_at(NOW - 10, tls13=tls13)), ring_of(key), NOW)
    assert (result.verdict, result.answer, result.key_state) == (verdict, answer, State(state))
    assert result.resumes and result.session is not None and result.session.tls13 == tls13


def test_expired_key_gives_full_handshake_with_its_expiry() -> None:
    """A key still in the ring but past expires_at: 'expired at <time>'."""
    key = key_in_state("expired", NOW)
    result = inspect_ticket(seal(key, state_at(NOW)), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.key_state is State.EXPIRED
    assert result.reason.startswith("expired at 2027-01-15T07:59:55Z")  # NOW - 5 s


def test_unknown_key_gives_full_handshake() -> None:
    """A ticket whose key left the ring: 'unknown key'."""
    dropped, kept = key_in_state("active", NOW), key_in_state("active", NOW)
    result = inspect_ticket(seal(dropped, state_at(NOW)), ring_of(kept), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.key is None
    assert result.reason.startswith("unknown key") and dropped.name.hex() in result.reason


def test_tampered_ticket_gives_bad_mac() -> None:
    """One flipped bit: 'bad MAC', though the key is found and active."""
    key = key_in_state("active", NOW)
    ticket = bytearray(seal(key, state_at(NOW)))
    ticket[-5] ^= 0x80
    result = inspect_ticket(bytes(ticket), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.key == key
    assert result.reason.startswith("bad MAC")


@pytest.mark.parametrize("data", [b"", b"\x01" * 5, b"\x02" * 31])
def test_garbage_is_malformed(data: bytes) -> None:
    """Shorter than name + IV: OpenSSL never even asks the callback."""
    result = inspect_ticket(data, ring_of(key_in_state("active", NOW)), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.reason.startswith("malformed")


def test_known_name_but_truncated_is_malformed() -> None:
    """A real key name followed by too few bytes: malformed."""
    key = key_in_state("active", NOW)
    result = inspect_ticket(seal(key, STATE)[:60], ring_of(key), NOW)
    assert result.key == key and result.reason.startswith("malformed")


def test_garbage_state_under_a_valid_mac_is_a_malformed_session() -> None:
    """A ticket that opens to something not an SSL_SESSION: full handshake (d2i fails)."""
    key = key_in_state("active", NOW)
    result = inspect_ticket(seal(key, b"not DER at all"), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE
    assert result.reason.startswith("malformed session")


def test_session_past_its_own_timeout_gives_full_handshake() -> None:
    """time + timeout passed: OpenSSL refuses it even under an active key."""
    key = key_in_state("active", NOW)
    result = inspect_ticket(seal(key, state_at(NOW - 7200, timeout=3600)), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE
    assert result.reason.startswith("session timed out")


def test_session_older_than_accept_for_gives_full_handshake() -> None:
    """stek's appdata says the full handshake was too long ago, however fresh the ticket."""
    key = key_in_state("active", NOW)
    ring = ring_of(key)
    parsed = sessions._load(state_at(NOW - 10))
    parsed["ticket_appdata"] = sessions.encode_birth(NOW - ring.policy.accept_for)
    result = inspect_ticket(seal(key, parsed.dump()), ring, NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE
    assert result.reason.startswith("session too old")
    assert result.session is not None and result.session.born_at == NOW - ring.policy.accept_for


def test_inspection_never_holds_key_bytes_in_its_dict() -> None:
    """to_dict (the --json output) names keys, never their material or the secret."""
    key = key_in_state("active", NOW)
    doc = json.dumps(inspect_ticket(seal(key, state_at(NOW)), ring_of(key), NOW).to_dict())
    for secret in (key.aes_key, key.hmac_key, b"\x5a" * 48):
        assert secret.hex() not in doc and base64.b64encode(secret).decode() not in doc


# -- input parsing -----------------------------------------------------------------------

def test_read_ticket_accepts_hex_base64_and_pem() -> None:
    """INPUT forms: hex, base64 (standard or URL-safe, any padding), session PEM."""
    key = key_in_state("active", NOW)
    ticket = seal(key, STATE)
    assert read_ticket(ticket.hex().upper() + "\n").ticket == ticket
    assert read_ticket(base64.b64encode(ticket).decode()).ticket == ticket
    assert read_ticket(base64.urlsafe_b64encode(ticket).decode().rstrip("=")).ticket == ticket
    client = sessions.replace(STATE, ticket=ticket)
    got = read_ticket(sessions.to_pem(client))
    assert got.ticket == ticket and got.client_session is not None and got.form == "session PEM"


@pytest.mark.parametrize("text", ["", "   \n", "not a ticket!",
                                  "-----BEGIN SSL SESSION PARAMETERS-----"])
def test_read_ticket_refuses_what_it_cannot_read(text: str) -> None:
    """Neither PEM, hex nor base64: InvalidTicket (the CLI maps it to exit 2)."""
    with pytest.raises(InvalidTicket):
        read_ticket(text)


def test_read_ticket_refuses_a_session_without_ticket() -> None:
    """A session file with no ticket in it says so."""
    with pytest.raises(InvalidTicket, match="no ticket"):
        read_ticket(sessions.to_pem(STATE))


# -- Python ssl.SSLSession helpers --------------------------------------------------------

@TLS_VERSIONS
def test_ticket_of_and_inspect_session_on_a_python_client(certs, tmp_path, tls_version) -> None:  # type: ignore[no-untyped-def]
    """ticket_of() gives the ticket the client will present; inspect_session() judges it."""
    key = key_in_state("active", now())
    with stek_server(certs, tmp_path, ring_of(key)) as srv:
        cctx = client_context(certs, tls_version)
        r = connect(srv.port, cctx)
        assert r.session is not None
        ticket = ticket_of(r.session)
        assert ticket is not None and ticket[:16] == key.name
        result = inspect_session(r.session, srv.installation.ring)
        assert result.verdict is Verdict.RESUME
        assert result.client_session is not None and result.client_session.tls13 == (
            tls_version == ssl.TLSVersion.TLSv1_3)
        assert connect(srv.port, cctx, r.session).reused


def test_ticket_of_is_none_without_a_ticket(certs) -> None:  # type: ignore[no-untyped-def]
    """A TLS 1.2 session from a server with OP_NO_TICKET holds no ticket: None."""
    ctx = server_context(certs)
    ctx.options |= ssl.OP_NO_TICKET
    with TLSServer(ctx) as srv:
        r = connect(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2))
    assert r.session is not None and ticket_of(r.session) is None
