"""The trust configuration of a server context, as a session id context.

OpenSSL resumes a session only in the session id context it was made in
(SSL_CTX_set_session_id_context(3); ``ssl_get_prev_session`` and
``tls_parse_ctos_psk`` compare it), under TLS 1.2 and 1.3.  Python's ``_ssl``
gives every server the same one, ``Python\\0``, so once stek shares ticket
keys between contexts, a session made where no client certificate was asked
for would resume where one is required, and a session of one virtual host
would resume on another.  nginx avoids this by hashing its certificates and
client CA names into the context (``ngx_ssl_session_id_context``); stek does
the same by default for the contexts it is installed on:

    SHA-256( b"stek trust v1" || 0x00
             || section(b"C", the served certificate chain, in order, DER)
             || section(b"V", one byte: the verify mode, 0 none, 1 optional, 2 required)
             || section(b"A", the client CA certificates, DER, sorted) )

where ``section(tag, items) = tag || u32(len(items)) || (u32(len(i)) || i)...``
(big-endian) and the client CAs count only when the verify mode asks for a
certificate.  32 bytes: exactly SSL_MAX_SID_CTX_LENGTH.  Two contexts share
it only if they serve the same chain and ask the same of clients, so sessions
resume across the workers and hosts of one service and never across trust
boundaries.  ``install(session_id_context=...)`` overrides it (a mixed fleet
adopts nginx's or HAProxy's, see stek.compat).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

#: The label that starts every trust hash.
LABEL = b"stek trust v1\x00"


def _section(tag: bytes, items: Iterable[bytes]) -> bytes:
    items = list(items)
    out = [tag, struct.pack(">I", len(items))]
    for item in items:
        out += [struct.pack(">I", len(item)), item]
    return b"".join(out)


def trust_session_id_context(chain: Iterable[bytes], verify_mode: int,
                             client_cas: Iterable[bytes]) -> bytes:
    """The 32-byte session id context of a trust configuration (see the module docstring)."""
    if verify_mode not in (0, 1, 2):
        raise ValueError("verify_mode must be 0 (none), 1 (optional) or 2 (required)")
    cas = sorted(client_cas) if verify_mode else []
    return hashlib.sha256(
        LABEL + _section(b"C", chain) + _section(b"V", [bytes([verify_mode])])
        + _section(b"A", cas)
    ).digest()
