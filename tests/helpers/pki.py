"""Certificates and credentials the production-shaped fleet tests make for themselves.

One CA signs the servers' certificates (both TLS server and client use, as
etcd peers and Redis replicas are clients of each other; names localhost
and 127.0.0.1) and stek's client certificate.  A second, unrelated CA makes
the "wrong CA" and "wrong client certificate" cases.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _subject(cn: str) -> x509.Name:
    # etcd's JSON gateway answers 400 to a client certificate that carries a
    # Common Name when client-cert-auth and auth are both on (embed/serve.go):
    # stek's client certificates name an organisation only.
    if cn.startswith("O="):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, cn[2:])])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, server: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_subject(cn))
         .issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         # Python 3.13's default contexts verify with VERIFY_X509_STRICT, which
         # wants both key identifiers (RFC 5280 section 4.2.1.1-2) and a CA's
         # keyCertSign usage (section 4.2.1.3).
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer_key.public_key()), critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(d: Path, label: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey | None) -> tuple[Path, Path]:
    c, k = d / f"{label}.pem", d / f"{label}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        os.chmod(k, 0o600)
    return c, k


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, Path]] = {}
    cas = {}
    for ca_label in ("ca", "other_ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(f"stek fleet {ca_label}", ca_key,
                   x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"stek fleet {ca_label}")]),
                   ca_key, ca=True, server=False)
        cas[ca_label] = (ca, ca_key)
        out[ca_label] = _write(d, ca_label, ca, None)
    for label, ca_label, cn, server in (("server", "ca", "localhost", True),
                                        ("client", "ca", "O=stek", False),
                                        ("other_client", "other_ca", "O=stek", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        ca, ca_key = cas[ca_label]
        out[label] = _write(d, label, _cert(cn, key, ca.subject, ca_key, ca=False,
                                            server=server), key)
    return Pki(d, out["ca"][0], *out["server"], *out["client"], out["other_ca"][0],
               *out["other_client"])


def password_file(d: Path, name: str, value: str | None = None) -> tuple[Path, str]:
    """A fresh random password in a 0600 file: (path, password)."""
    value = value or secrets.token_urlsafe(18) + "/+"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.password"
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return p, value
