"""Cross-implementation known answers: stek's codec and OpenSSL, both ways, real handshakes.

* OpenSSL -> codec: a ticket a stek-installed Python server issued in a real
  handshake opens with stek.ticket, and its state is the session the client
  holds (same protocol, suite, secret, times).
* codec -> OpenSSL: a ticket stek.ticket seals (fresh IV, so bytes OpenSSL
  never produced) from a real session's state is accepted by the same server:
  the handshake resumes.
"""

from __future__ import annotations

import ssl

import pytest

from helpers.certs import TLS_VERSIONS, client_context
from helpers.tickets import fresh_session_id, key_in_state, now, pem_der, ring_of, stek_server
from helpers.tls_peers import connect
from stek import session as sessions
from stek.hazmat.libssl import libssl
from stek.inspection import ticket_of
from stek.ticket import open_ticket, parse, seal


def secret(der: bytes) -> bytes:
    """The master / resumption secret (test-only: stek.session never exposes it)."""
    return bytes(sessions._load(der)["master_key"].native)


@pytest.fixture(params=[80, 48], ids=["ring80", "ring48"])
def server(request, certs, tmp_path):  # type: ignore[no-untyped-def]
    size = request.param
    with stek_server(certs, tmp_path, ring_of(key_in_state("active", now(), size),
                                              size=size)) as srv:
        yield srv


@TLS_VERSIONS
def test_openssl_ticket_opens_to_the_python_clients_session(server, certs, tls_version) -> None:  # type: ignore[no-untyped-def]
    """Python client: the ticket it holds opens with the ring; the state is its session."""
    r = connect(server.port, client_context(certs, tls_version))
    assert r.session is not None
    ticket = ticket_of(r.session)
    assert ticket is not None
    key = server.installation.ring.keys[0]
    opened = open_ticket(ticket, server.installation.ring)
    assert opened.key == key and parse(ticket).name == key.name
    client_der = libssl().session_der(r.session)
    inner, outer = sessions.decode(opened.state), sessions.decode(client_der)
    assert inner.protocol_id == outer.protocol_id
    assert inner.cipher_id == outer.cipher_id
    assert secret(opened.state) == secret(client_der)
    assert abs(inner.created_at - outer.created_at) <= 2
    assert inner.sid_ctx == server.installation.session_id_context  # stek.trust
    # The server seals the state with an empty session ID (construct_stateless_ticket).
    assert inner.session_id == b"" or inner.tls13
    assert server.installation.counters.issued >= 1


@TLS_VERSIONS
def test_openssl_ticket_opens_to_the_s_client_session(server, tls_version) -> None:  # type: ignore[no-untyped-def]
    """openssl s_client: its -sess_out file's ticket opens to that same session."""
    der = pem_der(server.session_file(tls_version))
    ticket = sessions.ticket(der)
    assert ticket is not None
    opened = open_ticket(ticket, server.installation.ring.keys)
    inner, outer = sessions.decode(opened.state), sessions.decode(der)
    assert (inner.protocol, inner.cipher_id) == (outer.protocol, outer.cipher_id)
    assert secret(opened.state) == secret(der)
    assert inner.timeout == server.installation.ring.policy.accept_for


@TLS_VERSIONS
def test_codec_sealed_ticket_resumes_on_openssl(server, tls_version) -> None:  # type: ignore[no-untyped-def]
    """A ticket sealed by stek.ticket (new IV) from a real state: the stek server resumes."""
    der = pem_der(server.session_file(tls_version))
    original = sessions.ticket(der)
    assert original is not None
    ring = server.installation.ring
    opened = open_ticket(original, ring)
    resealed = seal(opened.key, opened.state, iv=bytes(range(16)))
    assert resealed != original and parse(resealed).iv == bytes(range(16))
    before = server.installation.counters
    crafted = sessions.replace(der, ticket=resealed, session_id=fresh_session_id())
    assert server.resumes(tls_version, crafted)
    after = server.installation.counters
    assert after.resumed == before.resumed + 1 and after.errors == 0


@TLS_VERSIONS
def test_codec_sealed_modified_state_is_what_openssl_restores(server, certs, tls_version) -> None:  # type: ignore[no-untyped-def]
    """A state changed by stek before sealing is what OpenSSL resumes with.

    ticket_appdata ([18]) is added through asn1crypto and the state re-sealed
    by the codec: the server must parse stek's encoding, not a copy of bytes
    it produced, and still resume.
    """
    der = pem_der(server.session_file(tls_version))
    opened = open_ticket(sessions.ticket(der) or b"", server.installation.ring)
    parsed = sessions._load(opened.state)
    parsed["ticket_appdata"] = b"stek-was-here"
    state = parsed.dump()
    assert sessions.decode(state).ticket_appdata_len == len(b"stek-was-here")
    crafted = sessions.replace(der, ticket=seal(opened.key, state),
                               session_id=fresh_session_id())
    assert server.resumes(tls_version, crafted, name="modified")


def test_codec_sealed_ticket_with_the_wrong_key_does_not_resume(server) -> None:  # type: ignore[no-untyped-def]
    """Control: the same state sealed under a key the server lacks gives a full handshake."""
    version = ssl.TLSVersion.TLSv1_3
    der = pem_der(server.session_file(version))
    opened = open_ticket(sessions.ticket(der) or b"", server.installation.ring)
    stranger = key_in_state("active", now(), opened.key.size)
    crafted = sessions.replace(der, ticket=seal(stranger, opened.state),
                               session_id=fresh_session_id())
    before = server.installation.counters.rejected_unknown
    assert not server.resumes(version, crafted, name="stranger")
    assert server.installation.counters.rejected_unknown == before + 1
