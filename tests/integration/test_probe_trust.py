"""``stek probe`` finds ticket confusion: sessions carried across trust boundaries.

Against real servers: two HAProxy 2.6 frontends on one export, one requiring
client certificates (the certificate-less ticket of the other resumes there:
``client-auth-bypass``; with a key scope per frontend it gets a full
handshake); two stek-installed Python servers, one requiring client
certificates (the probe's verdict matches what the servers do); and a Python
server choosing its virtual host by SNI (``--sni`` twice:
``cross-name-resumption``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import stek
from helpers.certs import Certs, client_context, server_context
from helpers.ports import free_port
from helpers.processes import stek_cli
from helpers.programs import find_program
from helpers.tls_peers import TLSServer, connect
from helpers.web_servers import Server, live_store, nginx_server, nginx_servers

pytestmark = pytest.mark.servers

BOTH = ("1.2", "1.3")
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def probe(*args: str) -> tuple[int, dict, str]:
    proc = stek_cli("probe", *args, "--json", "--timeout", "5s")
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, doc, proc.stderr


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


def kinds(doc: dict, kind: str) -> list[dict]:
    return [d for d in doc["diagnoses"] if d["kind"] == kind]


def cell(doc: dict, src: str, dst: str, tls: str) -> dict:
    (c,) = [c for c in doc["matrix"] if (c["from"], c["to"], c["tls"]) == (src, dst, tls)]
    return c


def endpoints(doc: dict, tls: str) -> dict[str, dict]:
    return {e["target"]: e for e in doc["endpoints"] if e["tls"] == tls}


HAPROXY_PAIR = """\
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend open
    bind 127.0.0.1:{open_port} ssl crt {pem} tls-ticket-keys {open_keys}
    http-request return status 200 content-type text/plain string "open"
frontend clientauth
    bind 127.0.0.1:{auth_port} ssl crt {pem} tls-ticket-keys {auth_keys} {verify}
    http-request return status 200 content-type text/plain string "clientauth"
"""


@contextlib.contextmanager
def haproxy_pair(tmp_path: Path, certs: Certs, open_keys: Path,
                 auth_keys: Path) -> Iterator[tuple[str, str]]:
    """One HAProxy 2.6, two frontends: ``open`` and ``clientauth`` (verify required)."""
    exe = find_program("haproxy")
    pem = tmp_path / "server.pem"
    pem.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    pem.chmod(0o600)
    open_port, auth_port = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_PAIR.format(open_port=open_port, auth_port=auth_port, pem=pem,
                                       open_keys=open_keys, auth_keys=auth_keys,
                                       verify=f"ca-file {certs.ca} verify required"))
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    server = Server([exe, "-f", str(cfg), "-db"], tmp_path / "haproxy.log", auth_port)
    try:
        yield addr(open_port), addr(auth_port)
    finally:
        server.stop()


def export(store_path: Path, out: Path, *scope: str) -> Path:
    proc = stek_cli("export", "--store", f"file:{store_path}", "--format", "haproxy",
                    "--out", str(out), *scope)
    assert proc.returncode == 0, proc.stderr
    return out


def test_haproxy_frontends_on_one_export_bypass_client_auth(tmp_path: Path,
                                                            certs: Certs) -> None:
    """Both frontends load one export: the open frontend's certificate-less ticket
    resumes on the one that requires a certificate.  The client-auth frontend is
    probed (not an error): exit 1 with client-auth-bypass naming it and the origin."""
    store, _ = live_store(tmp_path)
    keys = export(store.path, tmp_path / "shared.keys")
    with haproxy_pair(tmp_path, certs, keys, keys) as (open_, auth):
        code, doc, err = probe(open_, auth)
        assert code == 1, err
        for tls in BOTH:
            eps = endpoints(doc, tls)
            assert eps[auth]["client_auth"] == "required" and eps[auth]["error"] is None
            assert eps[open_]["client_auth"] == "none" and eps[open_]["self_resume"] is True
            assert cell(doc, open_, auth, tls)["resumed"] is True
        bypass = kinds(doc, "client-auth-bypass")
        assert [(d["tls"], d["targets"]) for d in bypass] == [(tls, [auth, open_])
                                                              for tls in BOTH], doc
        assert f"{auth} requires a client certificate" in bypass[0]["message"]
        assert not kinds(doc, "unreachable") and not kinds(doc, "handshake-failed")

        # With the operator's certificate the client-auth frontend's own tickets are
        # measured too; the bypass is still there.
        code, doc, err = probe(open_, auth, "--cert", str(certs.client_cert),
                               "--key", str(certs.client_key))
        assert code == 1, err
        for tls in BOTH:
            eps = endpoints(doc, tls)
            assert eps[auth]["client_cert"] is True and eps[auth]["self_resume"] is True
            assert eps[auth]["tickets"] >= 1 and eps[auth]["key_name"] == eps[open_]["key_name"]
        assert len(kinds(doc, "client-auth-bypass")) == 2


def test_haproxy_frontends_in_their_own_scopes(tmp_path: Path, certs: Certs) -> None:
    """A scope per frontend (stek export --scope): no bypass; the certificate-less ticket
    gets a full handshake, which fails for want of a certificate.  --store with --scope
    looks key names up in that scope's keys."""
    store, _ = live_store(tmp_path)
    a = export(store.path, tmp_path / "a.keys", "--scope", "a")
    b = export(store.path, tmp_path / "b.keys", "--scope", "b")
    with haproxy_pair(tmp_path, certs, a, b) as (open_, auth):
        code, doc, err = probe(open_, auth, "--store", f"file:{store.path}", "--scope", "a")
        assert not kinds(doc, "client-auth-bypass"), doc["diagnoses"]
        for tls in BOTH:
            assert cell(doc, open_, auth, tls) == {
                "from": open_, "to": auth, "tls": tls, "resumed": False, "offered": True,
                "error": None}
            eps = endpoints(doc, tls)
            assert eps[open_]["self_resume"] is True and eps[open_]["key_state"] == "active"
            assert eps[auth]["client_auth"] == "required"
        assert code == 1  # the matrix is not full (the frontends must not share)

        # With a certificate: each frontend resumes its own tickets, under its scope's key.
        code, doc, err = probe(open_, auth, "--cert", str(certs.client_cert),
                               "--key", str(certs.client_key),
                               "--store", f"file:{store.path}", "--scope", "b")
        assert code == 1, err
        assert not kinds(doc, "client-auth-bypass"), doc["diagnoses"]
        for tls in BOTH:
            eps = endpoints(doc, tls)
            assert eps[auth]["self_resume"] is True and eps[auth]["key_state"] == "active"
            assert eps[open_]["key_state"] == "not in the ring"
            assert cell(doc, open_, auth, tls)["resumed"] is False
            assert cell(doc, auth, open_, tls)["resumed"] is False


@contextlib.contextmanager
def python_pair(certs: Certs, store: object, *, auth_mode: ssl.VerifyMode,
                sid: bytes | None = None) -> Iterator[tuple[str, str, TLSServer]]:
    """Two stek-installed Python servers on one ring; the second asks for client
    certificates (``auth_mode``) from the test CA."""
    open_ctx, auth_ctx = server_context(certs), server_context(certs)
    auth_ctx.verify_mode = auth_mode
    auth_ctx.load_verify_locations(certs.ca)
    handles = [stek.install(open_ctx, store, session_id_context=sid),  # type: ignore[arg-type]
               stek.install(auth_ctx, store, session_id_context=sid)]  # type: ignore[arg-type]
    try:
        with TLSServer(open_ctx) as o, TLSServer(auth_ctx) as a:
            yield addr(o.port), addr(a.port), a
    finally:
        for h in handles:
            h.uninstall()


def resumes_without_cert(certs: Certs, src: str, dst: str, tls: str) -> bool:
    """What the servers do, seen by a plain client: a certificate-less session from
    ``src`` offered to ``dst``."""
    cctx = client_context(certs, VERSIONS[tls])
    first = connect(int(src.rsplit(":", 1)[1]), cctx)
    try:
        return connect(int(dst.rsplit(":", 1)[1]), cctx, first.session).reused
    except (ssl.SSLError, OSError):
        return False  # a full handshake, refused for want of a certificate


def test_python_servers_are_safe_by_default(tmp_path: Path, certs: Certs) -> None:
    """stek-installed Python servers, one requiring client certificates: the
    certificate-less ticket does not resume there (different trust configurations),
    and the probe says so; with --cert the client-authenticated leg resumes."""
    store, _ = live_store(tmp_path)
    with python_pair(certs, store, auth_mode=ssl.CERT_REQUIRED) as (open_, auth, _srv):
        code, doc, err = probe(open_, auth)
        assert code == 1, err  # the two must not share sessions: the matrix is not full
        assert not kinds(doc, "client-auth-bypass"), doc["diagnoses"]
        for tls in BOTH:
            assert endpoints(doc, tls)[auth]["client_auth"] == "required"
            offered = cell(doc, open_, auth, tls)
            assert offered["offered"] and not offered["resumed"] and offered["error"] is None
            assert resumes_without_cert(certs, open_, auth, tls) is False
        code, doc, err = probe(open_, auth, "--cert", str(certs.client_cert),
                               "--key", str(certs.client_key))
        assert code == 1, err
        assert not kinds(doc, "client-auth-bypass"), doc["diagnoses"]
        for tls in BOTH:
            eps = endpoints(doc, tls)
            assert eps[auth]["client_cert"] is True and eps[auth]["self_resume"] is True


def test_python_servers_sharing_a_context_show_the_bypass(tmp_path: Path,
                                                          certs: Certs) -> None:
    """An explicit shared session_id_context and a server that asks for (but does not
    require) a certificate: the open server's session resumes there, the server sees
    no peer certificate, and the probe calls it a client-auth-bypass."""
    store, _ = live_store(tmp_path)
    with python_pair(certs, store, auth_mode=ssl.CERT_OPTIONAL,
                     sid=b"one-context") as (open_, auth, srv):
        code, doc, err = probe(open_, auth)
        assert code == 1, err
        bypass = kinds(doc, "client-auth-bypass")
        assert [(d["tls"], d["targets"]) for d in bypass] == [(tls, [auth, open_])
                                                              for tls in BOTH], doc
        assert f"{auth} asks for a client certificate" in bypass[0]["message"]
        for tls in BOTH:
            assert endpoints(doc, tls)[auth]["client_auth"] == "requested"
            assert resumes_without_cert(certs, open_, auth, tls) is True
        assert srv.peercerts and all(not p for p in srv.peercerts)


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (the second virtual host needs one of its own)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def virtual_hosts(tmp_path: Path, certs: Certs, store: object,
                  sid: bytes | None, *, with_stek: bool = True) -> Iterator[str]:
    """One Python server, two virtual hosts chosen by SNI (a.test: the default context,
    b.test: a context with its own certificate), both installed on the ring (or,
    without stek, each on OpenSSL's built-in key)."""
    ctx_a = server_context(certs)
    ctx_b = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx_b.load_cert_chain(*_self_signed(tmp_path, "b.test"))
    handles = [stek.install(ctx, store, session_id_context=sid)  # type: ignore[arg-type]
               for ctx in (ctx_a, ctx_b)] if with_stek else []

    def choose(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name == "b.test":
            sslobj.context = ctx_b

    ctx_a.sni_callback = choose
    try:
        with TLSServer(ctx_a) as srv:
            yield addr(srv.port)
    finally:
        for h in handles:
            h.uninstall()


def test_sni_names_sharing_sessions_are_cross_name_resumptions(tmp_path: Path,
                                                               certs: Certs) -> None:
    """Two virtual hosts of a plain Python server (no stek): OpenSSL decrypts
    every ticket on the listener with the first context's built-in key, in
    Python's one session id context, so a.test's ticket resumes under b.test
    and back; exit 1, or 0 with --allow-cross-name (still reported)."""
    store, _ = live_store(tmp_path)
    with virtual_hosts(tmp_path, certs, store, None, with_stek=False) as target:
        code, doc, err = probe(target, "--sni", "a.test", "--sni", "b.test")
        assert code == 1, err
        crossed = {(n["tls"], n["from_sni"], n["to_sni"]): n["resumed"] for n in doc["names"]}
        assert crossed == {(tls, a, b): True for tls in BOTH
                           for a, b in (("a.test", "b.test"), ("b.test", "a.test"))}
        found = kinds(doc, "cross-name-resumption")
        assert len(found) == 4 and all(d["targets"] == [target] for d in found)
        assert "issued for server name a.test on a connection for b.test" in found[0]["message"]
        assert doc["all_resume"] is True
        code, doc, err = probe(target, "--sni", "a.test", "--sni", "b.test",
                               "--allow-cross-name")
        assert code == 0, (err, doc["diagnoses"])
        assert len(kinds(doc, "cross-name-resumption")) == 4


def resumes_under(target: str, tls: str, first: str, then: str) -> bool:
    """What the server does, seen by a plain client: a session for ``first`` offered
    with SNI ``then``."""
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
    cctx.minimum_version = cctx.maximum_version = VERSIONS[tls]
    host, port = target.rsplit(":", 1)

    def once(name: str, session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
        with socket.create_connection((host, int(port)), timeout=10) as raw, \
                cctx.wrap_socket(raw, server_hostname=name, session=session) as tls_sock:
            tls_sock.sendall(b"hi\n")
            tls_sock.recv(1024)  # the echo: TLS 1.3 tickets have arrived
            assert tls_sock.session is not None
            return tls_sock.session, tls_sock.session_reused

    session, _ = once(first)
    return once(then, session)[1]


def test_sni_probe_matches_what_the_server_does(tmp_path: Path, certs: Certs) -> None:
    """stek's default contexts, one per virtual host: whatever the server does with a
    ticket offered under the other name, the probe reports exactly that, and calls
    each resumption a cross-name-resumption."""
    store, _ = live_store(tmp_path)
    with virtual_hosts(tmp_path, certs, store, None) as target:
        code, doc, err = probe(target, "--sni", "a.test", "--sni", "b.test")
        seen = {(n["tls"], n["from_sni"], n["to_sni"]): n["resumed"] for n in doc["names"]}
        server = {(tls, a, b): resumes_under(target, tls, a, b) for tls in BOTH
                  for a, b in (("a.test", "b.test"), ("b.test", "a.test"))}
        assert seen == server, doc["names"]
        # stek holds each ticket to its server name (docs/trust.md): nothing crosses.
        assert not any(server.values()), server
        found = {(d["tls"], d["message"].split("server name ")[1].split(" ")[0])
                 for d in kinds(doc, "cross-name-resumption")}
        assert found == {(tls, a) for (tls, a, _b), resumed in server.items() if resumed}
        assert code == (1 if any(server.values()) else 0), (err, doc["diagnoses"])


def test_probe_sends_each_name(tmp_path: Path, certs: Certs) -> None:
    """The names crossed are the names sent: each virtual host hands out its own
    certificate (the probe's certificate hash differs per name)."""
    store, _ = live_store(tmp_path)
    with virtual_hosts(tmp_path, certs, store, None) as target:
        seen = set()
        for name in ("a.test", "b.test"):
            code, doc, err = probe(target, "--sni", name, "--tls", "1.3")
            assert code == 0, err
            seen.add(doc["endpoints"][0]["certificate"])
        assert len(seen) == 2


def test_nginx_server_blocks_on_one_listener(tmp_path: Path, certs: Certs) -> None:
    """nginx, two server blocks (a.test, the default, and b.test) on one listener fed
    one export: under TLS 1.2 the default block's context decrypts every ticket on the
    port, so a.test's ticket resumes under b.test: cross-name-resumption.  Whatever
    nginx does, the probe reports what a plain client sees."""
    store, _ = live_store(tmp_path)
    proc = stek_cli("export", "--store", f"file:{store.path}", "--format", "nginx",
                    "--out", str(tmp_path / "keys"))
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    cert_b, key_b = _self_signed(tmp_path, "b.test")
    keys = tmp_path / "keys" / "tickets.conf"
    # a.test comes first: nginx's default server for the port (no default_server needed).
    blocks = (nginx_server(port, certs.cert, certs.key, keys, "a", ["server_name a.test"])
              + nginx_server(port, cert_b, key_b, keys, "b", ["server_name b.test"]))
    with nginx_servers(tmp_path / "nginx", blocks, port):
        target = addr(port)
        code, doc, err = probe(target, "--sni", "a.test", "--sni", "b.test")
        seen = {(n["tls"], n["from_sni"], n["to_sni"]): n["resumed"] for n in doc["names"]}
        server_did = {}
        for key in seen:
            try:
                server_did[key] = resumes_under(target, *key)
            except (ssl.SSLError, OSError):
                server_did[key] = False
    assert seen == server_did, doc["names"]
    assert seen[("1.2", "a.test", "b.test")] is True
    crossed = [d for d in kinds(doc, "cross-name-resumption") if d["tls"] == "1.2"]
    assert crossed and all(d["targets"] == [target] for d in crossed)
    assert code == 1, err
