"""No session crosses a trust boundary (docs/trust.md), shown with real handshakes.

Three ways a shared ring used to carry a session where it must not go:

1. two servers, one requiring client certificates: a certificate-less
   ticket from the other resumed on it;
2. one server, two virtual hosts switched by SNI: a.test's session resumed
   for b.test;
3. two services that must stay apart on one ring: key scopes.

Each case is run with the compiled and the ctypes callback, under TLS 1.2
and 1.3, and each server still resumes its own sessions.
"""

from __future__ import annotations

import datetime
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.tls_peers import TLSServer
from stek.errors import InvalidTicket
from stek.inspection import ticket_of
from stek.installation import accelerated_available
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.scope import scoped
from stek.stores.file import FileStore
from stek.ticket import open_ticket

CALLBACKS = pytest.mark.parametrize(
    "accelerate",
    [pytest.param(True, id="c-callback", marks=pytest.mark.skipif(
        not accelerated_available(), reason="compiled callback not built")),
     pytest.param(False, id="python-callback")],
)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    st = FileStore(tmp_path / "ring.json")
    init_ring(st, Policy())
    return st


@dataclass
class Hit:
    reused: bool
    session: ssl.SSLSession | None
    error: str | None


def hit(port: int, cctx: ssl.SSLContext, session: ssl.SSLSession | None = None,
        host: str | None = "localhost") -> Hit:
    """One round trip; a failed handshake or a refused request is an error, not an exception."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                cctx.wrap_socket(raw, server_hostname=host, session=session) as tls:
            tls.sendall(b"hi\n")
            if not tls.recv(1024):
                return Hit(tls.session_reused, tls.session, "closed without an answer")
            return Hit(tls.session_reused, tls.session, None)
    except (ssl.SSLError, OSError) as exc:
        return Hit(False, None, repr(exc))


def client_auth_context(certs: Certs) -> ssl.SSLContext:
    """A server context that requires a client certificate from the test CA."""
    ctx = server_context(certs)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(certs.ca)
    return ctx


# -- 1. client authentication ---------------------------------------------------


@CALLBACKS
@TLS_VERSIONS
def test_a_certificate_less_ticket_never_resumes_where_certificates_are_required(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, accelerate: bool) -> None:
    """Default settings: A asks no certificate, B requires one; A's ticket gets nothing from B."""
    open_ctx, auth_ctx = server_context(certs), client_auth_context(certs)
    a = stek.install(open_ctx, store, accelerate=accelerate)
    b = stek.install(auth_ctx, store, accelerate=accelerate)
    anonymous = client_context(certs, tls_version)
    with TLSServer(open_ctx) as sa, TLSServer(auth_ctx) as sb:
        first = hit(sa.port, anonymous)
        assert first.error is None and first.session is not None
        assert ticket_of(first.session), "A issued no ticket"
        # A resumes its own session.
        again = hit(sa.port, anonymous, first.session)
        assert again.reused and again.error is None
        # B: no resumption, and no request served without a certificate.
        crossed = hit(sb.port, anonymous, first.session)
        assert not crossed.reused
        assert crossed.error is not None
        assert all(p for p in sb.peercerts), "B served a connection without a peer certificate"
    assert b.counters.resumed == 0
    assert a.counters.resumed >= 1


@CALLBACKS
@TLS_VERSIONS
def test_a_client_authenticated_session_still_resumes_with_its_certificate(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, accelerate: bool) -> None:
    auth_ctx = client_auth_context(certs)
    b = stek.install(auth_ctx, store, accelerate=accelerate)
    cctx = client_context(certs, tls_version)
    cctx.load_cert_chain(certs.client_cert, certs.client_key)
    with TLSServer(auth_ctx) as sb:
        first = hit(sb.port, cctx)
        assert first.error is None
        again = hit(sb.port, cctx, first.session)
        assert again.reused and again.error is None
        assert len(sb.peercerts) == 2
        assert all(p and dict(x[0] for x in p["subject"])["commonName"] == "stek client"
                   for p in sb.peercerts)
    assert b.counters.resumed == 1
    assert b.counters.rejected_no_peer_cert == 0


@CALLBACKS
@TLS_VERSIONS
def test_the_last_check_holds_where_one_session_id_context_is_shared(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, accelerate: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """A mixed fleet's explicit context joins both servers; the decrypt path still refuses."""
    open_ctx, auth_ctx = server_context(certs), client_auth_context(certs)
    stek.install(open_ctx, store, accelerate=accelerate, session_id_context=b"one fleet")
    b = stek.install(auth_ctx, store, accelerate=accelerate, session_id_context=b"one fleet")
    anonymous = client_context(certs, tls_version)
    with TLSServer(open_ctx) as sa, TLSServer(auth_ctx) as sb:
        first = hit(sa.port, anonymous)
        for _ in range(2):
            crossed = hit(sb.port, anonymous, first.session)
            assert not crossed.reused and crossed.error is not None
        assert all(p for p in sb.peercerts)
    assert b.counters.resumed == 0
    assert b.counters.rejected_no_peer_cert == 2
    with caplog.at_level(logging.WARNING, logger="stek.installation"):
        b._report()
        b._report()
    lines = [r for r in caplog.records if "requires one" in r.getMessage()]
    assert len(lines) == 1


# -- 2. virtual hosts switched by SNI ----------------------------------------------


def _vhost_certs(tmp_path: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A CA and a certificate for each of a.test and b.test."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("vhost CA")).issuer_name(name("vhost CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = tmp_path / "vhost-ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out = {}
    for host in ("a.test", "b.test"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        out[host] = (tmp_path / f"{host}.pem", tmp_path / f"{host}.key")
        out[host][0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[host][1].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return ca_path, out


class VhostServer(TLSServer):
    """One listener, two virtual hosts: the SNI callback switches to b.test's context."""

    def __init__(self, contexts: dict[str, ssl.SSLContext]) -> None:
        first = contexts["a.test"]

        def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if name in contexts:
                sslobj.context = contexts[name]

        first.sni_callback = pick  # type: ignore[assignment]
        super().__init__(first)
        self.served_by: list[str] = []
        self._names = {id(c): n for n, c in contexts.items()}

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.served_by.append(self._names[id(tls.context)])
                if tls.recv(1024):
                    tls.sendall(b"ok\n")
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(repr(exc))


@CALLBACKS
@TLS_VERSIONS
def test_an_sni_switch_never_carries_a_session_to_another_virtual_host(
        tmp_path: Path, store: FileStore, tls_version: ssl.TLSVersion,
        accelerate: bool) -> None:
    """a.test's session never resumes for b.test, nor b.test's for a.test; each resumes its own."""
    ca, pairs = _vhost_certs(tmp_path)
    contexts = {}
    handles = {}
    for host, (cert, key) in pairs.items():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        contexts[host] = ctx
        handles[host] = stek.install(ctx, store, accelerate=accelerate)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(ca)
    cctx.check_hostname = False  # a resumed connection shows no certificate to check
    cctx.minimum_version = cctx.maximum_version = tls_version
    with VhostServer(contexts) as srv:
        outcome = {}
        for src in ("a.test", "b.test"):
            for dst in ("a.test", "b.test"):
                first = hit(srv.port, cctx, host=src)
                assert first.error is None and ticket_of(first.session)
                second = hit(srv.port, cctx, first.session, host=dst)
                assert second.error is None
                outcome[src, dst] = second.reused
                assert srv.served_by[-1] == dst
        assert srv.errors == []
    assert outcome == {("a.test", "a.test"): True, ("a.test", "b.test"): False,
                       ("b.test", "a.test"): False, ("b.test", "b.test"): True}
    # OpenSSL runs the first context's ticket callbacks for every connection.
    assert handles["a.test"].counters.rejected_other_name == 2
    assert handles["a.test"].counters.resumed == 2


@CALLBACKS
@TLS_VERSIONS
def test_a_session_made_without_sni_never_resumes_under_a_name(
        tmp_path: Path, store: FileStore, tls_version: ssl.TLSVersion,
        accelerate: bool) -> None:
    """No SNI reaches the default virtual host; that session must not resume for b.test."""
    ca, pairs = _vhost_certs(tmp_path)
    contexts = {}
    handle = None
    for host, (cert, key) in pairs.items():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        contexts[host] = ctx
        inst = stek.install(ctx, store, accelerate=accelerate)
        handle = handle or inst
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(ca)
    cctx.check_hostname = False
    cctx.minimum_version = cctx.maximum_version = tls_version
    with VhostServer(contexts) as srv:
        unnamed = hit(srv.port, cctx, host=None)
        assert unnamed.error is None and ticket_of(unnamed.session)
        assert hit(srv.port, cctx, unnamed.session, host=None).reused
        named = hit(srv.port, cctx, unnamed.session, host="b.test")
        assert named.error is None and not named.reused
        assert srv.served_by[-1] == "b.test"
    assert handle is not None and handle.counters.rejected_other_name == 1


# -- 3. key scopes ---------------------------------------------------------------


@CALLBACKS
@TLS_VERSIONS
def test_scopes_on_one_ring_never_resume_each_others_tickets(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, accelerate: bool) -> None:
    """Same certificate, same settings, one ring: only the scope keeps them apart."""
    ctx_x, ctx_y = server_context(certs), server_context(certs)
    x = stek.install(ctx_x, store, accelerate=accelerate, scope="x")
    y = stek.install(ctx_y, store, accelerate=accelerate, scope="y")
    assert x.session_id_context == y.session_id_context
    cctx = client_context(certs, tls_version)
    with TLSServer(ctx_x) as sx, TLSServer(ctx_y) as sy:
        first = hit(sx.port, cctx)
        ticket = ticket_of(first.session)
        assert ticket[:16] == x.ring.encrypting_key(x.ring.keys[0].activates_at + 1).name \
            or ticket[:16] in {k.name for k in x.ring.keys}
        assert ticket[:16] not in {k.name for k in store.read().keys}
        assert hit(sx.port, cctx, first.session).reused
        crossed = hit(sy.port, cctx, first.session)
        assert not crossed.reused and crossed.error is None
    # An unknown key name: a clean full handshake, never a MAC failure.
    assert y.counters.rejected_unknown == 1
    assert y.counters.accepted_by_name == 0 and y.counters.errors == 0
    # Scope x's keys open x's ticket; y's keys and the ring's own do not know its name.
    assert open_ticket(ticket, scoped(store.read(), "x")).key.name == ticket[:16]
    for keys in (scoped(store.read(), "y"), store.read()):
        with pytest.raises(InvalidTicket, match="unknown key"):
            open_ticket(ticket, keys)


def test_a_bad_scope_is_refused_at_install(certs: Certs, store: FileStore) -> None:
    with pytest.raises(stek.ConfigError, match="a scope is 1 to 64 characters"):
        stek.install(server_context(certs), store, scope="no spaces")
