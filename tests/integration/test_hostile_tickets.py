"""Issue 2: hostile tickets presented by a real client to a stek-installed server.

A real ``openssl s_client`` resumes with a session file whose ticket was
replaced (stek.session.replace) by: random bytes of many lengths, a real
ticket with a flipped MAC or IV byte, a real ticket under an unknown name,
and a ticket properly sealed under a key that is still in the ring but
expired a moment ago.  Under TLS 1.2 and TLS 1.3, each must give a full
handshake, nothing may escape the callback (errors == 0, no "callback
failed" log), the counters must show the callback ran where OpenSSL calls
it, and a normal resumption must still work right after.

Where OpenSSL calls the callback (ssl/t1_lib.c tls_decrypt_ticket): an
empty ticket is SSL_TICKET_EMPTY, and fewer than key name + IV (32) bytes
are refused before the callback; from 32 bytes on, the callback is asked
for the (random) name.  A TLS 1.3 client does not offer an empty ticket
as a PSK at all.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from helpers.tickets import (
    StekServer,
    fresh_session_id,
    key_in_state,
    now,
    pem_der,
    ring_of,
    stek_server,
)
from helpers.tls_peers import s_client, s_client_reused
from stek import session as sessions
from stek.ticket import open_ticket, seal

LENGTHS = [0, 1, 31, 32, 47, 48, 63, 64, 80, 1000]


@dataclass
class Hostile:
    """The server under attack, its real session file and the keys it holds."""

    srv: StekServer
    version: ssl.TLSVersion
    der: bytes
    real_ticket: bytes
    state: bytes


@pytest.fixture(scope="module", params=[ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                ids=["tls12", "tls13"])
def hostile(request, certs, tmp_path_factory):  # type: ignore[no-untyped-def]
    t = now()
    active = key_in_state("active", t)
    just_expired = key_in_state("expired", t)  # in the snapshot, expires_at 5 s ago
    d = tmp_path_factory.mktemp(f"hostile-{request.param.name}")
    with stek_server(certs, d, ring_of(active, just_expired)) as srv:
        der = pem_der(srv.session_file(request.param))
        ticket = sessions.ticket(der) or b""
        state = open_ticket(ticket, [active]).state
        yield Hostile(srv, request.param, der, ticket, state)
        assert srv.server.errors == []


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def _expired_key(h: Hostile):  # type: ignore[no-untyped-def]
    return next(k for k in h.srv.installation.ring.keys if k.expires_at <= now())


#: name -> (ticket maker, counter the callback must bump, or None if OpenSSL
#: never calls it for this ticket).
CASES: dict[str, tuple[Callable[[Hostile], bytes], str | None]] = {
    **{f"random-{n}": ((lambda n: lambda h: os.urandom(n))(n),
                       "rejected_unknown" if n >= 32 else None) for n in LENGTHS},
    "random-real-length": (lambda h: os.urandom(len(h.real_ticket)), "rejected_unknown"),
    # The key callback finds the active key (answers 1/2), then OpenSSL's MAC
    # check fails: accepted by name, never counted as resumed.
    "flipped-mac": (lambda h: _flip(h.real_ticket, len(h.real_ticket) - 1), "accepted_by_name"),
    "flipped-iv": (lambda h: _flip(h.real_ticket, 16 + 3), "accepted_by_name"),
    "unknown-name": (lambda h: os.urandom(16) + h.real_ticket[16:], "rejected_unknown"),
    # A genuine ticket (valid MAC) under the just-expired key: only expiry rejects it.
    "just-expired-key": (lambda h: seal(_expired_key(h), h.state), "rejected_expired"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_ticket_gets_a_full_handshake(hostile: Hostile, case: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """No crash, nothing raised in the callback, a full handshake, and service goes on."""
    make, counter = CASES[case]
    h = hostile
    inst = h.srv.installation
    ticket = make(h)
    if case.startswith("random-") and case != "random-real-length":
        assert len(ticket) == int(case.split("-")[1])
    before = inst.counters
    caplog.set_level(logging.DEBUG, logger="stek")

    crafted = sessions.replace(h.der, ticket=ticket, session_id=fresh_session_id())
    out = h.srv.present(h.version, crafted, name=case)

    assert "\nNew, " in out and not s_client_reused(out), out
    after = inst.counters
    assert after.errors == 0
    assert "stek ticket callback failed" not in caplog.text
    assert after.issued > before.issued  # the full handshake ended with a fresh ticket
    if counter is None:
        assert (after.rejected_unknown, after.rejected_expired, after.resumed) == \
            (before.rejected_unknown, before.rejected_expired, before.resumed)
    else:
        assert getattr(after, counter) == getattr(before, counter) + 1, (before, after)
    assert after.resumed == before.resumed  # no hostile ticket ever counts as resumed
    # The server keeps serving: the genuine session still resumes right after.
    genuine = h.srv.workdir / f"real-{h.version.name}.pem"
    again = s_client(h.srv.port, h.version, h.srv.workdir, sess_in=genuine, ca=h.srv.certs.ca)
    assert s_client_reused(again), again
    assert inst.counters.errors == 0
