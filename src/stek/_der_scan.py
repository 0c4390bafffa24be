"""A linear-time bound on untrusted DER, checked before any decoder builds objects.

:mod:`stek.session` runs :func:`check_der` on every SSL_SESSION before
asn1crypto parses it, so what the decoder builds stays within a few megabytes.
"""

from __future__ import annotations

import contextlib

from .errors import InvalidTicket

#: The largest SSL_SESSION stek decodes.  A session holds at most a ticket
#: (RFC 5077 section 3.3: < 64 KiB) and the peer's certificate, which an
#: OpenSSL client takes only within its 100 KiB certificate-list limit
#: (SSL_CTX_set_max_cert_list(3)); 256 KiB leaves room for both.
MAX_SESSION_LEN = 256 * 1024
#: At most this many ASN.1 elements (a certificate has a few hundred; each
#: element costs asn1crypto about 0.5 KiB, so the decoder builds < 10 MB).
MAX_ELEMENTS = 10_000
#: crypto/asn1/tasn_dec.c ASN1_MAX_CONSTRUCTED_NEST: OpenSSL's d2i refuses deeper.
MAX_DEPTH = 30


def _header(data: bytes, pos: int, end: int) -> tuple[bool, int, int]:
    """One DER header at ``pos``: (constructed, contents start, contents end).

    X.690 section 8.1: identifier octets (high tag numbers in base 128), then
    definite length octets (DER, X.690 section 10.1, has no indefinite form).
    """
    if pos >= end:
        raise ValueError("truncated")
    ident = data[pos]
    pos += 1
    if ident & 0x1F == 0x1F:  # high tag number form (X.690 8.1.2.4)
        for _ in range(4):
            if pos >= end:
                raise ValueError("truncated tag")
            pos += 1
            if not data[pos - 1] & 0x80:
                break
        else:
            raise ValueError("tag number too large")
    if pos >= end:
        raise ValueError("truncated length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise ValueError("indefinite length (BER, not DER)")
    else:
        n = first & 0x7F
        if n > 4 or pos + n > end:
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise ValueError("length past the end")
    return bool(ident & 0x20), pos, pos + length


def _count(data: bytes, start: int, end: int, depth: int, budget: int) -> int:
    """Elements in ``data[start:end]`` (all of it DER), within the bounds; iterative.

    The contents of OCTET and BIT STRINGs are counted too when they hold DER,
    as asn1crypto parses those (certificate extensions, public keys) on demand.
    Every byte is visited at most MAX_DEPTH times, so this is linear.
    """
    stack = [(start, end, depth)]
    count = 0
    while stack:
        pos, stop, level = stack.pop()
        if level > MAX_DEPTH:
            raise InvalidTicket(f"malformed session: ASN.1 nested deeper than {MAX_DEPTH} "
                                f"levels (OpenSSL's limit)")
        while pos < stop:
            ident = data[pos]
            constructed, body, pos = _header(data, pos, stop)
            count += 1
            if count > budget:
                raise InvalidTicket(f"malformed session: more than {MAX_ELEMENTS} ASN.1 "
                                    f"elements (no real session has that many)")
            if constructed:
                stack.append((body, pos, level + 1))
            elif ident in (0x03, 0x04) and pos - body > 2:
                skip = 1 if ident == 0x03 else 0  # BIT STRING: unused-bits octet
                # Not DER inside: opaque bytes, as asn1crypto leaves them.
                with contextlib.suppress(ValueError):
                    count += _count(data, body + skip, pos, level + 1, budget - count)
    return count


def check_der(der: bytes) -> None:
    """Refuse, in linear time, DER that would make the decoder build too much.

    Raises :class:`InvalidTicket` over :data:`MAX_SESSION_LEN` bytes, past
    :data:`MAX_DEPTH` levels of nesting or :data:`MAX_ELEMENTS` elements, or
    when they do not start with one DER element (bytes after it are left to
    the caller, which says "trailing bytes").
    """
    if len(der) > MAX_SESSION_LEN:
        raise InvalidTicket(f"malformed session: {len(der)} bytes, more than any session "
                            f"stek decodes ({MAX_SESSION_LEN})")
    try:
        _count(der, 0, _header(der, 0, len(der))[2], 0, MAX_ELEMENTS)
    except ValueError as exc:
        raise InvalidTicket(f"malformed session: not an OpenSSL SSL_SESSION (not DER: "
                            f"{exc})") from None
