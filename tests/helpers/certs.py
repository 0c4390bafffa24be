"""Certificates and TLS contexts for the tests: a throwaway CA, a server and a client."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    dir: Path
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
           key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    return b.sign(issuer_key, hashes.SHA256())


def make_certs(d: Path) -> Certs:
    """In ``d``: a throwaway CA, a server certificate for localhost/127.0.0.1, a client one."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("stek test CA", ca_key, _name("stek test CA"), ca_key, ca=True, server=False)
    paths = {}
    for label, cn, server in (("server", "localhost", True), ("client", "stek client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(cn, ca_key, ca.subject, key, ca=False, server=server)
        paths[label] = (d / f"{label}.pem", d / f"{label}.key")
        paths[label][0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[label][1].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        os.chmod(paths[label][1], 0o600)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return Certs(d, d / "ca.pem", paths["server"][0], paths["server"][1],
                 paths["client"][0], paths["client"][1])


def client_context(certs: Certs, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A Python client pinned to one TLS version, trusting the test CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs.ca)
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


def server_context(certs: Certs) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert, certs.key)
    return ctx


TLS_VERSIONS = pytest.mark.parametrize(
    "tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"]
)
