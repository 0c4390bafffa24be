"""``stek inspect --server``: the session id context, against real nginx, HAProxy and Python.

OpenSSL resumes a session only under the session id context it was made in.
Each test takes a real ticket from a real server on one shared ring, asks
``stek inspect`` about a Python server and about the issuing server, then
presents the ticket to a real stek Python server with the context in question:
the verdict must be what that server does.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from helpers.certs import TLS_VERSIONS, Certs
from helpers.tickets import pem_der, stek_server
from helpers.tls_peers import s_client
from helpers.web_servers import haproxy, live_store, nginx
from stek.compat import HAPROXY_SESSION_ID_CONTEXT, PYTHON_SESSION_ID_CONTEXT
from stek.export import export
from stek.keyring import Keyring
from stek.stores.file import FileStore


def inspect(pem: Path, store: FileStore, *server: str) -> tuple[int, dict]:
    args = ["--server", server[0]] if server else []
    proc = subprocess.run([sys.executable, "-m", "stek.cli", "inspect", str(pem), "--store",
                           f"file:{store.path}", "--json", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def python_server_resumes(certs: Certs, workdir: Path, ring: Keyring, pem: Path,
                          version: ssl.TLSVersion, sid_ctx: bytes | None = None) -> bool:
    """Present the session file to a real stek Python server on ``ring``
    (under ``sid_ctx`` when given, else Python's own context)."""
    with stek_server(certs, workdir, ring, session_id_context=sid_ctx) as srv:
        resumed = srv.resumes(version, pem_der(pem), name="foreign")
        assert srv.installation.counters.errors == 0
        return resumed


def nginx_context(certs: Certs) -> bytes:
    """ngx_ssl_session_id_context (src/event/ngx_event_openssl.c): SHA-1 over "HTTP",
    then the SHA-1 of each certificate's DER (one certificate here, no client CAs)."""
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(b"HTTP" + hashlib.sha1(der).digest()).digest()


@TLS_VERSIONS
def test_nginx_ticket_is_judged_by_the_servers_context(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """An nginx ticket on a shared ring: inspect shows nginx's 20-byte context; for a
    Python server it says full handshake (was: resume), and the real Python server
    does not resume it; under nginx's context both say resume."""
    store, now = live_store(tmp_path)
    ring = store.read()
    out = tmp_path / "nginx-keys"
    export("nginx", ring, now, out)
    sess = tmp_path / "nginx-sess.pem"
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx:
        full = s_client(ngx.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
        again = s_client(ngx.port, tls_version, tmp_path, sess_in=sess, ca=certs.ca)
    assert sess.exists() and "\nReused, " in again, full + again

    code, doc = inspect(sess, store)
    ctx = bytes.fromhex(doc["session_id_context"]["hex"])
    assert code == 0 and ctx == nginx_context(certs), doc
    assert "nginx" in doc["session_id_context"]["server"]

    code, doc = inspect(sess, store, "python")
    assert code == 1 and doc["verdict"] == "full handshake", doc
    assert doc["reason"].startswith("session id context")
    assert not python_server_resumes(certs, tmp_path / "py", ring, sess, tls_version)

    code, doc = inspect(sess, store, ctx.hex())
    assert code == 0 and doc["verdict"] == "resume", doc
    assert python_server_resumes(certs, tmp_path / "py-nginx-ctx", ring, sess, tls_version,
                                 sid_ctx=ctx)


@TLS_VERSIONS
def test_server_nginx_computes_the_context_from_nginx_files(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """--server nginx:CERT[:CLIENT_CA] computes the context from the files nginx reads:
    a real nginx with ssl_client_certificate + ssl_verify_client optional issues a
    ticket that resumes for nginx:CERT:CLIENT_CA, not for nginx:CERT (that is the
    context of an nginx that does not verify clients), nor for python."""
    store, now = live_store(tmp_path)
    ring = store.read()
    out = tmp_path / "nginx-keys"
    export("nginx", ring, now, out)
    sess = tmp_path / "nginx-sess.pem"
    with nginx(tmp_path, certs, out / "tickets.conf", client_ca=certs.ca) as ngx:
        full = s_client(ngx.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
    assert sess.exists(), full

    code, doc = inspect(sess, store, f"nginx:{certs.cert}:{certs.ca}")
    assert code == 0 and doc["verdict"] == "resume", doc
    assert doc["server_session_id_context"]["hex"] == doc["session_id_context"]["hex"]
    without_ca = f"nginx:{certs.cert}"
    code, doc = inspect(sess, store, without_ca)
    assert code == 1 and doc["reason"].startswith("session id context"), doc
    assert doc["server_session_id_context"]["hex"] == nginx_context(certs).hex()
    code, doc = inspect(sess, store, "python")
    assert code == 1, doc


@TLS_VERSIONS
def test_haproxy_ticket_is_judged_by_the_servers_context(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """A HAProxy ticket: context 'haproxy' (SHCTX_APPNAME in HAProxy's
    include/haproxy/ssl_sock-t.h, measured here on 2.6); --server haproxy resumes,
    --server python does not, exactly as a real Python server under each context."""
    store, now = live_store(tmp_path)
    ring = store.read()
    keys = tmp_path / "haproxy.keys"
    export("haproxy", ring, now, keys)
    sess = tmp_path / "haproxy-sess.pem"
    with haproxy(tmp_path, certs, keys) as hap:
        full = s_client(hap.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
    assert sess.exists(), full

    code, doc = inspect(sess, store, "haproxy")
    assert code == 0 and doc["verdict"] == "resume", doc
    assert doc["session_id_context"] == {"hex": HAPROXY_SESSION_ID_CONTEXT.hex(), "len": 7,
                                         "server": "HAProxy"}
    assert python_server_resumes(certs, tmp_path / "py-hap-ctx", ring, sess, tls_version,
                                 sid_ctx=HAPROXY_SESSION_ID_CONTEXT)

    code, doc = inspect(sess, store, "python")
    assert code == 1 and doc["reason"].startswith("session id context"), doc
    assert not python_server_resumes(certs, tmp_path / "py", ring, sess, tls_version)


@TLS_VERSIONS
def test_python_ticket_is_judged_by_the_servers_context(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """A ticket of a stek Python server on Python's own context ('Python\\0'):
    resumes on Python servers, not on a server under HAProxy's context; the text
    output names both contexts."""
    store, _ = live_store(tmp_path)
    ring = store.read()
    with stek_server(certs, tmp_path / "issuer", ring,
                     session_id_context=PYTHON_SESSION_ID_CONTEXT) as srv:
        sess = srv.session_file(tls_version)
    code, doc = inspect(sess, store, "python")
    assert code == 0 and doc["verdict"] == "resume", doc
    assert doc["session_id_context"]["hex"] == PYTHON_SESSION_ID_CONTEXT.hex()
    assert python_server_resumes(certs, tmp_path / "py", ring, sess, tls_version,
                                 sid_ctx=PYTHON_SESSION_ID_CONTEXT)

    code, doc = inspect(sess, store, "haproxy")
    assert code == 1 and doc["reason"].startswith("session id context"), doc
    assert not python_server_resumes(certs, tmp_path / "py-hap-ctx", ring, sess, tls_version,
                                     sid_ctx=HAPROXY_SESSION_ID_CONTEXT)

    proc = subprocess.run([sys.executable, "-m", "stek.cli", "inspect", str(sess), "--store",
                           f"file:{store.path}", "--server", "haproxy"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "sid context   507974686f6e00 (7 bytes, Python's ssl)" in proc.stdout
    assert "server        session id context 686170726f7879 (7 bytes, HAProxy)" in proc.stdout


@TLS_VERSIONS
def test_a_default_stek_ticket_is_judged_by_the_trust_context(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """stek's default context (docs/trust.md): the ticket carries the server's
    handle.session_id_context; --server HEX of it resumes, --server python does not,
    and another stek server with the same certificate and settings resumes it."""
    store, _ = live_store(tmp_path)
    ring = store.read()
    with stek_server(certs, tmp_path / "issuer", ring) as srv:
        sess = srv.session_file(tls_version)
        trust = srv.installation.session_id_context
    assert len(trust) == 32
    code, doc = inspect(sess, store, trust.hex())
    assert code == 0 and doc["verdict"] == "resume", doc
    assert doc["session_id_context"]["hex"] == trust.hex()
    code, doc = inspect(sess, store, "python")
    assert code == 1 and doc["reason"].startswith("session id context"), doc
    assert python_server_resumes(certs, tmp_path / "py", ring, sess, tls_version)


def test_server_option_is_validated_and_documented() -> None:
    """--server takes python, haproxy or hex up to 32 bytes; --help explains it."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stek.cli", "inspect", *args],
                              capture_output=True, text=True, timeout=60)

    bad = cli("-", "--server", "apache")
    assert bad.returncode == 2 and "expected 'python', 'haproxy', 'nginx:" in bad.stderr
    long = cli("-", "--server", "00" * 33)
    assert long.returncode == 2 and "at most 32 bytes" in long.stderr
    helptext = " ".join(cli("--help").stdout.split())
    assert "--server python|haproxy|nginx:CERT[:CLIENT_CA]|HEX" in helptext
    assert "resumes a session only in the context it was made in" in helptext
    assert "ssl_client_certificate" in helptext


def test_server_nginx_files_are_checked(tmp_path: Path, certs: Certs) -> None:
    """nginx:PATH with a missing or non-certificate file: one line, exit 2, nothing read."""
    def cli(server: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stek.cli", "inspect", "-",
                               "--server", server], input="", capture_output=True,
                              text=True, timeout=60)

    missing = cli(f"nginx:{tmp_path / 'none.pem'}")
    assert missing.returncode == 2, missing.stderr
    assert "cannot read the certificate chain" in missing.stderr
    assert "Traceback" not in missing.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    bad_ca = cli(f"nginx:{certs.cert}:{junk}")
    assert bad_ca.returncode == 2 and "no PEM certificate (client CA file)" in bad_ca.stderr
    assert cli("nginx:").returncode == 2
