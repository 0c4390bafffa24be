"""Mixed fleets: a Python server on the same ring as real nginx 1.22 or HAProxy 2.6.

OpenSSL resumes a session only in the session id context it was made in.
With ``install(..., session_id_context=...)`` set to the other server's
(stek.compat), the Python server and nginx (HAProxy) resume each other's
tickets in both directions, under TLS 1.2 and 1.3, with the compiled and
the Python callback; with Python's own context, neither does, and the
refused tickets never count as resumed.  The contexts stek.compat computes
are checked against the ones nginx and HAProxy seal inside their tickets.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.tls_peers import TLSServer, connect
from helpers.web_servers import Server, get, haproxy, live_store, nginx, ticket_of
from stek.compat import (
    HAPROXY_SESSION_ID_CONTEXT,
    PYTHON_SESSION_ID_CONTEXT,
    nginx_session_id_context,
)
from stek.export import export
from stek.scope import scoped
from stek.session import decode
from stek.ticket import open_ticket

pytestmark = pytest.mark.servers


@pytest.fixture(params=[True, False], ids=["c-callback", "python-callback"])
def accelerate(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def _nginx(tmp_path: Path, certs: Certs, ring, now: float) -> AbstractContextManager[Server]:  # type: ignore[no-untyped-def]
    out = tmp_path / "nginx-keys"
    export("nginx", ring, now, out)
    return nginx(tmp_path, certs, out / "tickets.conf")


def _haproxy(tmp_path: Path, certs: Certs, ring, now: float) -> AbstractContextManager[Server]:  # type: ignore[no-untyped-def]
    keys = tmp_path / "haproxy.keys"
    export("haproxy", ring, now, keys)
    return haproxy(tmp_path, certs, keys)


Start = Callable[..., AbstractContextManager[Server]]
FLEETS: dict[str, tuple[Start, Callable[[Certs], bytes]]] = {
    "nginx": (_nginx, lambda certs: nginx_session_id_context(certs.cert)),
    "haproxy": (_haproxy, lambda certs: HAPROXY_SESSION_ID_CONTEXT),
}


@pytest.mark.parametrize("peer", list(FLEETS))
@pytest.mark.parametrize("adopt", [True, False], ids=["their-context", "python-context"])
@pytest.mark.parametrize("scope", [None, "edge"], ids=["unscoped", "scoped"])
@TLS_VERSIONS
def test_python_server_and_peer_resume_each_others_tickets(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion, accelerate: bool,
        peer: str, adopt: bool, scope: str | None) -> None:
    """Within one key scope (the peer fed that scope's export) as without."""
    start, context_of = FLEETS[peer]
    store, now = live_store(tmp_path)
    ring = scoped(store.read(), scope)
    sid = context_of(certs)
    sctx = server_context(certs)
    handle = stek.install(sctx, store, accelerate=accelerate,
                          session_id_context=sid if adopt else None, scope=scope)
    assert handle.accelerated is accelerate
    if adopt:
        assert handle.session_id_context == sid
    else:
        # stek's own: the trust configuration's hash (stek.trust), not the peer's.
        assert handle.session_id_context not in (sid, PYTHON_SESSION_ID_CONTEXT)
        assert len(handle.session_id_context) == 32
    cctx = client_context(certs, tls_version)
    with start(tmp_path, certs, ring, now) as srv, TLSServer(sctx) as py:
        theirs = get(srv.port, cctx)
        # The context stek.compat gives is the one the peer seals in its tickets.
        assert decode(open_ticket(theirs.ticket, ring).state).sid_ctx == sid
        on_python = connect(py.port, cctx, theirs.session)
        ours = connect(py.port, cctx)
        assert ticket_of(ours.session)[:16] == theirs.name  # the same ring, the same key
        assert decode(open_ticket(ticket_of(ours.session), ring).state).sid_ctx == \
            handle.session_id_context
        on_peer = get(srv.port, cctx, ours.session)
        assert not py.errors
    c = handle.counters
    if adopt:
        assert on_python.reused, f"the Python server must resume {peer}'s ticket"
        assert on_peer.reused, f"{peer} must resume the Python server's ticket"
        assert c.resumed == 1 and c.accepted_by_name == 1
    else:
        assert not on_python.reused and not on_peer.reused
        # The key callback knew the key; OpenSSL then refused the session
        # (another session id context): not a resumption.
        assert c.resumed == 0 and c.accepted_by_name == 1
    assert c.errors == 0
    handle.uninstall()


def test_python_servers_keep_pythons_context(certs: Certs, tmp_path: Path,
                                             accelerate: bool) -> None:
    """Python's own context, given explicitly to both, joins them as before stek's default;
    a server left on the default (the trust hash) resumes neither's session."""
    store, _ = live_store(tmp_path)
    a, b, c = server_context(certs), server_context(certs), server_context(certs)
    ha = stek.install(a, store, accelerate=accelerate,
                      session_id_context=PYTHON_SESSION_ID_CONTEXT)
    hb = stek.install(b, store, accelerate=accelerate,
                      session_id_context=PYTHON_SESSION_ID_CONTEXT)
    hc = stek.install(c, store, accelerate=accelerate)
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
    with TLSServer(a) as sa, TLSServer(b) as sb, TLSServer(c) as sc:
        first = connect(sa.port, cctx)
        assert connect(sb.port, cctx, first.session).reused
        assert not connect(sc.port, cctx, first.session).reused
    assert ha.counters.issued >= 1 and hb.counters.resumed == 1 and hc.counters.resumed == 0


@pytest.mark.parametrize("bad", [b"", b"x" * 33, "HAProxy"])
def test_bad_session_id_context_is_a_clear_error(certs: Certs, tmp_path: Path,
                                                 bad: object) -> None:
    store, _ = live_store(tmp_path)
    with pytest.raises(stek.StekError, match="1 to 32 bytes"):
        stek.install(server_context(certs), store, session_id_context=bad)  # type: ignore[arg-type]


def test_nginx_context_with_client_ca_list(certs: Certs, tmp_path: Path) -> None:
    """With ssl_verify_client, nginx hashes each client CA's name too (once each)."""
    with_ca = nginx_session_id_context(certs.cert, certs.ca)
    doubled = tmp_path / "ca-twice.pem"
    doubled.write_bytes(certs.ca.read_bytes() * 2)
    assert nginx_session_id_context(certs.cert, doubled) == with_ca
    assert with_ca != nginx_session_id_context(certs.cert)
    assert len(with_ca) == 20


def _self_signed_ca(cn: str) -> bytes:
    """A throwaway CA certificate (PEM) whose subject is ``CN=cn``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@TLS_VERSIONS
def test_nginx_context_with_client_cas_is_the_one_nginx_seals(
        certs: Certs, tmp_path: Path, tls_version: ssl.TLSVersion) -> None:
    """A real nginx with ``ssl_client_certificate`` (two CAs, one repeated) and
    ``ssl_verify_client optional`` seals in its tickets exactly the context
    nginx_session_id_context(cert, client_ca) computes: the CA names count, in
    file order, each once; and a Python server under it resumes nginx's ticket."""
    client_ca = tmp_path / "client-cas.pem"
    test_ca = certs.ca.read_bytes()
    client_ca.write_bytes(test_ca + _self_signed_ca("stek second client CA") + test_ca)
    expected = nginx_session_id_context(certs.cert, client_ca)
    assert expected != nginx_session_id_context(certs.cert)
    swapped = tmp_path / "swapped.pem"
    swapped.write_bytes(_self_signed_ca("stek second client CA") + test_ca)
    assert nginx_session_id_context(certs.cert, swapped) != expected

    store, now = live_store(tmp_path)
    ring = store.read()
    out = tmp_path / "nginx-keys"
    export("nginx", ring, now, out)
    cctx = client_context(certs, tls_version)
    sctx = server_context(certs)
    handle = stek.install(sctx, store, session_id_context=expected)
    with nginx(tmp_path, certs, out / "tickets.conf", client_ca=client_ca) as ngx, \
            TLSServer(sctx) as py:
        theirs = get(ngx.port, cctx)
        assert theirs.ticket, "nginx issued no ticket"
        assert decode(open_ticket(theirs.ticket, ring).state).sid_ctx == expected
        assert get(ngx.port, cctx, theirs.session).reused
        assert connect(py.port, cctx, theirs.session).reused
        assert not py.errors
    assert handle.counters.resumed == 1 and handle.counters.errors == 0
    handle.uninstall()


def test_nginx_context_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(stek.StekError, match="cannot read the certificate chain"):
        nginx_session_id_context(tmp_path / "none.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(stek.StekError, match="no PEM certificate"):
        nginx_session_id_context(tmp_path / "junk.pem")
