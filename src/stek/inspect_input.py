"""What did the user hand ``stek inspect``?  Recognise it, or say what it is not (sans-IO).

Invariant (the fuzz target and a Hypothesis property check it): any bytes
give a :class:`Recognized` or raise :class:`~stek.errors.InvalidTicket` with a
one-line reason, never another exception, in time linear in the input, which
is capped at :data:`MAX_INPUT_LEN`.  Messages name what the input looks like
(a private key, a certificate, a keyring, a ticket-key file) but never
repeat its content: it may be secret.
"""

from __future__ import annotations

import base64
import binascii
import enum
import string
from dataclasses import dataclass

from . import session as sessions
from .errors import InvalidTicket
from .ticket import MAX_LEN as MAX_TICKET_LEN
from .ticket import STATE_OFFSET

#: The most stek inspect reads: a session PEM (base64 of at most
#: MAX_SESSION_LEN DER, 64-column lines) or a hex ticket fit well within it.
MAX_INPUT_LEN = 512 * 1024

_EXPECTED = ("stek inspect reads the 'SSL SESSION PARAMETERS' PEM that "
             "'openssl s_client -sess_out' writes, or a ticket in hex or base64")
_HEX = frozenset(string.hexdigits)
_B64 = frozenset(string.ascii_letters + string.digits + "+/=")
_B64URL = frozenset(string.ascii_letters + string.digits + "-_=")
_LABEL = frozenset(string.ascii_uppercase + string.digits + " ")
#: What other PEM labels hold (RFC 7468 section 4 and OpenSSL's pem.h).
_PEM_KINDS = {
    "PRIVATE KEY": "a private key", "RSA PRIVATE KEY": "a private key",
    "EC PRIVATE KEY": "a private key", "ENCRYPTED PRIVATE KEY": "a private key",
    "DSA PRIVATE KEY": "a private key", "CERTIFICATE": "a certificate",
    "TRUSTED CERTIFICATE": "a certificate", "CERTIFICATE REQUEST": "a certificate request",
    "PUBLIC KEY": "a public key", "X509 CRL": "a CRL", "DH PARAMETERS": "DH parameters",
}
#: Ticket key file sizes (nginx ssl_session_ticket_key: 48 or 80 raw bytes).
_KEY_FILE_SIZES = (48, 80)


class Kind(enum.Enum):
    """The forms ``stek inspect`` accepts."""

    SESSION_PEM = "session PEM"
    SESSION_DER = "session DER"
    HEX = "hex"
    BASE64 = "base64"

    @property
    def is_session(self) -> bool:
        return self in (Kind.SESSION_PEM, Kind.SESSION_DER)


@dataclass(frozen=True)
class Recognized:
    """The input's kind and its payload: a session's DER, or the ticket's bytes."""

    kind: Kind
    payload: bytes

    def __repr__(self) -> str:
        return f"Recognized({self.kind.value}, {len(self.payload)} bytes)"


def _refuse(what: str) -> InvalidTicket:
    return InvalidTicket(f"{what}; {_EXPECTED}")


def recognize(data: bytes) -> Recognized:
    """Recognise ``data``; raise :class:`InvalidTicket` saying what it is not."""
    if len(data) > MAX_INPUT_LEN:
        raise InvalidTicket(f"input is {len(data)} bytes, more than stek inspect reads "
                            f"({MAX_INPUT_LEN}): no session file or ticket is that large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _binary(data)
    return _text(text)


def _binary(data: bytes) -> Recognized:
    if data[:1] == b"\x30":  # a DER SEQUENCE: i2d_SSL_SESSION, or another DER object
        try:
            sessions.decode(data)
        except InvalidTicket:
            raise _refuse("binary DER that is not an OpenSSL SSL_SESSION (a certificate "
                          "or a key?)") from None
        return Recognized(Kind.SESSION_DER, data)
    if len(data) in _KEY_FILE_SIZES:
        raise _refuse(f"{len(data)} bytes of binary: the size of a ticket key file "
                      f"(keep it secret), not a ticket")
    raise _refuse("binary data that is neither text nor a DER SSL_SESSION")


def _text(text: str) -> Recognized:
    stripped = text.strip()
    if not stripped:
        raise _refuse("empty input")
    begin = stripped.find("-----BEGIN ")
    if begin >= 0:
        return _pem(stripped, begin)
    if stripped[0] in "{[":
        raise _refuse("JSON, not a ticket (a keyring? give the ring with --store)")
    if all(c in _HEX or c in " \t\r\n:" for c in stripped):
        digits = "".join(c for c in stripped if c in _HEX)
        if len(digits) % 2:
            raise _refuse(f"{len(digits)} hex digits, an odd number (a truncated hex "
                          f"ticket?)")
        return Recognized(Kind.HEX, bytes.fromhex(digits))
    return _base64(stripped)


def _pem(text: str, begin: int) -> Recognized:
    start = begin + len("-----BEGIN ")
    close = text.find("-----", start, start + 64)
    label = text[start:close] if close >= 0 else ""
    if label == sessions.PEM_LABEL:
        return Recognized(Kind.SESSION_PEM, sessions.from_pem(text[begin:]))
    if not label or not set(label) <= _LABEL:
        raise _refuse("a malformed PEM block")
    kind = _PEM_KINDS.get(label, "not a session")
    secret = " (keep it secret)" if "PRIVATE" in label else ""
    raise _refuse(f"a PEM '{label}' block: {kind}{secret}, not a session")


def _base64(text: str) -> Recognized:
    # Base64 may be wrapped in lines, never spaced within one: text with
    # spaces or punctuation is prose, not a ticket.
    lines = text.splitlines()
    compact = "".join(line.strip() for line in lines)
    if len(lines) > 1 and all(len(line.strip()) == 108 and line.strip().endswith("=")
                              and set(line.strip()) <= _B64 for line in lines):
        # One base64 80-byte key per line: HAProxy's tls-ticket-keys file.
        raise _refuse(f"{len(lines)} lines of 80-byte base64 keys: a HAProxy "
                      f"tls-ticket-keys file (keep it secret), not a ticket")
    alphabet = _B64URL if ("-" in compact or "_" in compact) else _B64
    body = compact.rstrip("=")
    if (not set(compact) <= alphabet or "=" in body or len(compact) - len(body) > 2
            or len(body) % 4 == 1):
        raise _refuse("text that is not a session PEM, nor a ticket in hex or base64")
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = (base64.urlsafe_b64decode(padded) if alphabet is _B64URL
               else base64.b64decode(padded, validate=True))
    except (binascii.Error, ValueError):
        raise _refuse("text that is not valid base64") from None
    if len(raw) < STATE_OFFSET:
        # Any short word is valid base64: below a key name and IV it is no ticket.
        raise _refuse(f"text that decodes as base64 to only {len(raw)} bytes, fewer "
                      f"than any ticket's key name and IV ({STATE_OFFSET})")
    if len(raw) > MAX_TICKET_LEN:
        raise _refuse(f"base64 of {len(raw)} bytes, longer than any TLS ticket "
                      f"({MAX_TICKET_LEN})")
    return Recognized(Kind.BASE64, raw)


def looks_inline(argument: str) -> bool:
    """Whether a command-line argument that names no file is itself a ticket or session."""
    try:
        recognize(argument.encode("utf-8", "surrogateescape"))
    except InvalidTicket:
        return False
    return True


__all__ = ["MAX_INPUT_LEN", "Kind", "Recognized", "looks_inline", "recognize"]
