"""Decode OpenSSL's ASN.1 ``SSL_SESSION`` (the state inside a ticket), sans-IO.

A ticket's decrypted state, and the file ``openssl s_client -sess_out``
writes, are both ``i2d_SSL_SESSION`` output.  The structure is
``SSL_SESSION_ASN1`` in OpenSSL's ``ssl/ssl_asn1.c`` (checked against that
file; tags 19 and 20 arrived in OpenSSL 3.2 and are optional)::

    SEQUENCE {
      version            INTEGER  (SSL_SESSION_ASN1_VERSION, 1)
      ssl_version        INTEGER  (0x0303 TLS 1.2, 0x0304 TLS 1.3, ...)
      cipher             OCTET STRING (2 bytes: the IANA cipher suite)
      session_id         OCTET STRING
      master_key         OCTET STRING (TLS 1.2 master secret / TLS 1.3 PSK)
      key_arg        [0] IMPLICIT OCTET STRING OPTIONAL
      time           [1] EXPLICIT INTEGER OPTIONAL  (Unix seconds)
      timeout        [2] EXPLICIT INTEGER OPTIONAL  (seconds)
      peer           [3] EXPLICIT Certificate OPTIONAL
      sid_ctx        [4] EXPLICIT OCTET STRING OPTIONAL
      verify_result  [5] EXPLICIT INTEGER OPTIONAL
      hostname       [6] EXPLICIT OCTET STRING OPTIONAL  (SNI)
      psk_identity_hint [7], psk_identity [8]  EXPLICIT OCTET STRING OPTIONAL
      tick_lifetime_hint [9] EXPLICIT INTEGER OPTIONAL
      tick          [10] EXPLICIT OCTET STRING OPTIONAL  (client side: the ticket)
      comp_id       [11] EXPLICIT OCTET STRING OPTIONAL
      srp_username  [12] EXPLICIT OCTET STRING OPTIONAL
      flags         [13] EXPLICIT INTEGER OPTIONAL
      tick_age_add  [14] EXPLICIT INTEGER OPTIONAL  (TLS 1.3)
      max_early_data [15] EXPLICIT INTEGER OPTIONAL (TLS 1.3)
      alpn_selected [16] EXPLICIT OCTET STRING OPTIONAL
      max_fragment_len_mode [17] EXPLICIT INTEGER OPTIONAL
      ticket_appdata [18] EXPLICIT OCTET STRING OPTIONAL
      kex_group     [19] EXPLICIT INTEGER OPTIONAL  (OpenSSL >= 3.2)
      peer_rpk      [20] EXPLICIT OCTET STRING OPTIONAL  (OpenSSL >= 3.2)
    }

The master / resumption secret is never exposed by :class:`SessionInfo`:
only its length.  Anything that is not such a structure raises
:class:`~stek.errors.InvalidTicket`, as ``d2i_SSL_SESSION`` failing makes
OpenSSL fall back to a full handshake (``tls_decrypt_ticket``), and so do
bytes left over after the structure (its ``slen != 0`` check).

Bounded for untrusted input: before asn1crypto builds anything, a linear
scan of the DER (:func:`check_der`) refuses blobs over :data:`MAX_SESSION_LEN`,
nesting deeper than OpenSSL's own ``ASN1_MAX_CONSTRUCTED_NEST`` (30,
crypto/asn1/tasn_dec.c) and more than :data:`MAX_ELEMENTS` ASN.1 elements,
so what the decoder builds stays within a few megabytes.  PEM is read with
plain string searches (linear time), never a backtracking regex.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from asn1crypto import core, x509

# Re-exported ("X as X"): stek.session has always offered them.
from ._der_scan import MAX_DEPTH as MAX_DEPTH
from ._der_scan import MAX_ELEMENTS as MAX_ELEMENTS
from ._der_scan import MAX_SESSION_LEN as MAX_SESSION_LEN
from ._der_scan import check_der
from .errors import InvalidTicket
from .ticket_appdata import BIRTH_LEN as BIRTH_LEN
from .ticket_appdata import BIRTH_MAGIC as BIRTH_MAGIC
from .ticket_appdata import decode_birth
from .ticket_appdata import encode_birth as encode_birth

#: ssl/ssl_local.h: SSL_SESSION_ASN1_VERSION.
ASN1_VERSION = 1
#: The PEM label of ``PEM_write_SSL_SESSION`` (``openssl s_client -sess_out``).
PEM_LABEL = "SSL SESSION PARAMETERS"

#: Protocol versions (ssl_version), from openssl/prov_ssl.h and the RFCs.
PROTOCOLS = {
    0x0300: "SSLv3",
    0x0301: "TLSv1",
    0x0302: "TLSv1.1",
    0x0303: "TLSv1.2",
    0x0304: "TLSv1.3",
    0xFEFF: "DTLSv1",
    0xFEFD: "DTLSv1.2",
    0x0100: "DTLS1_BAD_VER",
}
TLS1_3_VERSION = 0x0304

#: IANA names of the cipher suites OpenSSL 1.1.1/3.x negotiates by default
#: (IANA "TLS Cipher Suites" registry).  Others show their number only.
CIPHER_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
    0x1304: "TLS_AES_128_CCM_SHA256",
    0x1305: "TLS_AES_128_CCM_8_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCAA: "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    0xC024: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC028: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA",
    0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
}


def _opt(tag: int) -> dict[str, Any]:
    return {"explicit": tag, "optional": True}


class _SessionASN1(core.Sequence):  # type: ignore[misc]
    """``SSL_SESSION_ASN1`` of ssl/ssl_asn1.c (see the module docstring)."""

    _fields = [  # noqa: RUF012 - asn1crypto's declaration style
        ("version", core.Integer),
        ("ssl_version", core.Integer),
        ("cipher", core.OctetString),
        ("session_id", core.OctetString),
        ("master_key", core.OctetString),
        ("key_arg", core.OctetString, {"implicit": 0, "optional": True}),
        ("time", core.Integer, _opt(1)),
        ("timeout", core.Integer, _opt(2)),
        ("peer", x509.Certificate, _opt(3)),
        ("session_id_context", core.OctetString, _opt(4)),
        ("verify_result", core.Integer, _opt(5)),
        ("tlsext_hostname", core.OctetString, _opt(6)),
        ("psk_identity_hint", core.OctetString, _opt(7)),
        ("psk_identity", core.OctetString, _opt(8)),
        ("tlsext_tick_lifetime_hint", core.Integer, _opt(9)),
        ("tlsext_tick", core.OctetString, _opt(10)),
        ("comp_id", core.OctetString, _opt(11)),
        ("srp_username", core.OctetString, _opt(12)),
        ("flags", core.Integer, _opt(13)),
        ("tlsext_tick_age_add", core.Integer, _opt(14)),
        ("max_early_data", core.Integer, _opt(15)),
        ("alpn_selected", core.OctetString, _opt(16)),
        ("tlsext_max_fragment_len_mode", core.Integer, _opt(17)),
        ("ticket_appdata", core.OctetString, _opt(18)),
        ("kex_group", core.Integer, _opt(19)),
        ("peer_rpk", core.OctetString, _opt(20)),
    ]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a session holds, minus its secrets (only their length is kept).

    Instants are Unix seconds.  ``ticket_len`` is the length of the ticket
    a *client* session carries (0 inside a ticket's own state).
    """

    protocol_id: int
    protocol: str
    cipher_id: int
    cipher: str | None
    created_at: int
    timeout: int
    secret_len: int
    session_id: bytes
    sid_ctx: bytes
    sni: str | None
    alpn: bytes | None
    peer_certificate: bool
    peer_subject: str | None
    verify_result: int
    lifetime_hint: int
    ticket_len: int
    flags: int
    age_add: int | None
    max_early_data: int | None
    max_fragment_len_mode: int
    ticket_appdata_len: int
    kex_group: int | None
    psk_identity: bool
    #: The full handshake's time: stek's ticket appdata, else ``created_at``.
    born_at: int

    @property
    def tls13(self) -> bool:
        return self.protocol_id == TLS1_3_VERSION

    @property
    def expires_at(self) -> int:
        """When OpenSSL stops resuming it (``SSL_SESSION_get_time + timeout``)."""
        return self.created_at + self.timeout

    @property
    def cipher_label(self) -> str:
        name = self.cipher or "unknown suite"
        return f"{name} (0x{self.cipher_id:04X})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; secrets appear as a length only."""
        return {
            "protocol": self.protocol,
            "protocol_id": f"0x{self.protocol_id:04X}",
            "cipher": self.cipher,
            "cipher_id": f"0x{self.cipher_id:04X}",
            "created_at": self.created_at,
            "timeout": self.timeout,
            "expires_at": self.expires_at,
            "master_secret_len": self.secret_len,
            "session_id": self.session_id.hex(),
            "sid_ctx": self.sid_ctx.hex(),
            "sni": self.sni,
            "alpn": self.alpn.decode("ascii", "replace") if self.alpn is not None else None,
            "peer_certificate": self.peer_certificate,
            "peer_subject": self.peer_subject,
            "verify_result": self.verify_result,
            "lifetime_hint": self.lifetime_hint,
            "ticket_len": self.ticket_len,
            "flags": self.flags,
            "tls13": {
                "age_add": self.age_add,
                "max_early_data": self.max_early_data,
            } if self.tls13 else None,
            "max_fragment_len_mode": self.max_fragment_len_mode,
            "ticket_appdata_len": self.ticket_appdata_len,
            "kex_group": self.kex_group,
            "psk_identity": self.psk_identity,
            "born_at": self.born_at,
        }


# What our own field checks may raise on odd-but-parsed values.
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeError)


def _load(der: bytes) -> _SessionASN1:
    """Parse exactly one SSL_SESSION or raise InvalidTicket."""
    data = bytes(der)
    check_der(data)
    try:
        parsed: _SessionASN1 = _SessionASN1.load(data)
        # asn1crypto parses lazily: touch every field now, inside the try.
        parsed.native  # noqa: B018
        used = len(parsed.dump())
    except Exception as exc:
        # The boundary with a third-party parser fed attacker bytes: asn1crypto
        # reports bad input with an open set of exceptions (the fuzz target
        # found AttributeError), so all of them become InvalidTicket here.
        raise InvalidTicket(
            f"malformed session: not an OpenSSL SSL_SESSION ({type(exc).__name__})"
        ) from None
    if used != len(data):
        # tls_decrypt_ticket: "if (slen != 0)" after d2i_SSL_SESSION.
        raise InvalidTicket(f"malformed session: {len(data) - used} trailing bytes after "
                            f"the SSL_SESSION")
    return parsed


def _int(parsed: _SessionASN1, name: str, default: int | None = 0) -> int | None:
    value = parsed[name]
    return default if isinstance(value, core.Void) else int(value.native)


def _octets(parsed: _SessionASN1, name: str) -> bytes | None:
    value = parsed[name]
    return None if isinstance(value, core.Void) else bytes(value.native)


def _subject(peer: x509.Certificate) -> str | None:
    try:
        return str(peer.subject.human_friendly)
    except Exception:  # display only: a strange name is not an error
        return None


def decode(der: bytes) -> SessionInfo:
    """Decode an ``i2d_SSL_SESSION`` blob, checking what ``d2i_SSL_SESSION`` checks."""
    parsed = _load(der)
    try:
        return _info(parsed)
    except _ASN1_ERRORS as exc:
        raise InvalidTicket(
            f"malformed session: not an OpenSSL SSL_SESSION ({type(exc).__name__})"
        ) from None


def _info(parsed: _SessionASN1) -> SessionInfo:
    version = _int(parsed, "version")
    if version != ASN1_VERSION:
        raise InvalidTicket(f"malformed session: SSL_SESSION version {version}, "
                            f"expected {ASN1_VERSION}")
    protocol_id = int(parsed["ssl_version"].native)
    # d2i_SSL_SESSION: the major byte must be TLS (3) or DTLS (0xFE), or DTLS1_BAD_VER.
    if (protocol_id >> 8) not in (0x03, 0xFE) and protocol_id != 0x0100:
        raise InvalidTicket(f"malformed session: unsupported protocol 0x{protocol_id:X}")
    cipher = bytes(parsed["cipher"].native)
    if len(cipher) != 2:  # SSL_R_CIPHER_CODE_WRONG_LENGTH
        raise InvalidTicket(f"malformed session: cipher code is {len(cipher)} bytes, not 2")
    cipher_id = int.from_bytes(cipher, "big")
    secret = bytes(parsed["master_key"].native)
    hostname = _octets(parsed, "tlsext_hostname")
    peer = parsed["peer"]
    has_peer = not isinstance(peer, core.Void)
    tls13 = protocol_id == TLS1_3_VERSION
    return SessionInfo(
        protocol_id=protocol_id,
        protocol=PROTOCOLS.get(protocol_id, f"0x{protocol_id:04X}"),
        cipher_id=cipher_id,
        cipher=CIPHER_SUITES.get(cipher_id),
        created_at=_int(parsed, "time") or 0,
        timeout=_int(parsed, "timeout") or 0,
        secret_len=len(secret),
        session_id=_octets(parsed, "session_id") or b"",
        sid_ctx=_octets(parsed, "session_id_context") or b"",
        sni=hostname.decode("utf-8", "replace") if hostname is not None else None,
        alpn=_octets(parsed, "alpn_selected"),
        peer_certificate=has_peer,
        peer_subject=_subject(peer) if has_peer else None,
        verify_result=_int(parsed, "verify_result") or 0,
        lifetime_hint=_int(parsed, "tlsext_tick_lifetime_hint") or 0,
        ticket_len=len(_octets(parsed, "tlsext_tick") or b""),
        flags=_int(parsed, "flags") or 0,
        age_add=_int(parsed, "tlsext_tick_age_add") if tls13 else None,
        max_early_data=_int(parsed, "max_early_data") if tls13 else None,
        max_fragment_len_mode=_int(parsed, "tlsext_max_fragment_len_mode") or 0,
        ticket_appdata_len=len(_octets(parsed, "ticket_appdata") or b""),
        kex_group=_int(parsed, "kex_group", None),
        psk_identity=not isinstance(parsed["psk_identity"], core.Void),
        born_at=_born(parsed),
    )


def _born(parsed: _SessionASN1) -> int:
    born = decode_birth(_octets(parsed, "ticket_appdata"))
    return born if born is not None else (_int(parsed, "time") or 0)


def ticket(der: bytes) -> bytes | None:
    """The ticket a client session carries (tag [10]), or None."""
    return _octets(_load(der), "tlsext_tick")


_UNSET: Any = object()


def replace(der: bytes, *, ticket: bytes | None = _UNSET,
            session_id: bytes = _UNSET) -> bytes:
    """Re-encode a session with its ticket (None removes it) or session ID replaced.

    Everything else keeps its original encoding.  This is how tests craft the
    hostile ``-sess_in`` files a real client then presents.
    """
    parsed = _load(der)
    if ticket is not _UNSET:
        parsed["tlsext_tick"] = None if ticket is None else bytes(ticket)
    if session_id is not _UNSET:
        parsed["session_id"] = bytes(session_id)
    return bytes(parsed.dump(force=False))


_BEGIN = f"-----BEGIN {PEM_LABEL}-----"
_END = f"-----END {PEM_LABEL}-----"


def is_pem(text: str) -> bool:
    return _BEGIN in text


def from_pem(text: str) -> bytes:
    """The DER inside an ``SSL SESSION PARAMETERS`` PEM block (s_client -sess_out).

    RFC 7468 section 2 framing, found with two string searches: linear time
    whatever lies between or around the markers.
    """
    start = text.find(_BEGIN)
    end = text.find(_END, start + len(_BEGIN)) if start >= 0 else -1
    if end < 0:
        raise InvalidTicket(f"malformed session file: no complete '{PEM_LABEL}' PEM block")
    body = "".join(text[start + len(_BEGIN):end].split())
    if len(body) > MAX_SESSION_LEN * 4 // 3 + 4:
        raise InvalidTicket(f"malformed session file: the PEM block holds more than any "
                            f"session stek decodes ({MAX_SESSION_LEN} bytes)")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidTicket("malformed session file: bad base64 in the PEM block") from None


def to_pem(der: bytes) -> str:
    """``PEM_write_SSL_SESSION`` format: 64-column base64 lines."""
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {PEM_LABEL}-----\n" + "\n".join(lines) + \
        f"\n-----END {PEM_LABEL}-----\n"


__all__ = [
    "CIPHER_SUITES",
    "MAX_ELEMENTS",
    "MAX_SESSION_LEN",
    "PEM_LABEL",
    "PROTOCOLS",
    "SessionInfo",
    "check_der",
    "decode",
    "from_pem",
    "is_pem",
    "replace",
    "ticket",
    "to_pem",
]
