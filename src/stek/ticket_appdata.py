"""stek's ticket appdata: when the session's full handshake happened, sans-IO.

Its own module so that the binding layer (:mod:`stek.hazmat.libssl`), which
writes and reads it in the ticket callback, needs no ASN.1 decoder.
"""

from __future__ import annotations

#: stek's ticket appdata (SSL_SESSION_set1_ticket_appdata(3), ASN.1 tag [18]):
#: this magic, then the Unix time of the full handshake that created the
#: session, 8 bytes big-endian.  Renewed tickets carry it on, so a session
#: never outlives accept_for (stek.schedule.decrypted_ticket_answer).  It is
#: encrypted inside the ticket: only the ring's holders can read or forge it.
BIRTH_MAGIC = b"stk1"
BIRTH_LEN = len(BIRTH_MAGIC) + 8


def encode_birth(born_at: int) -> bytes:
    return BIRTH_MAGIC + int(born_at).to_bytes(8, "big")


def decode_birth(appdata: bytes | None) -> int | None:
    """The birth stek recorded in a session's ticket appdata, or None."""
    if appdata is None or len(appdata) != BIRTH_LEN or not appdata.startswith(BIRTH_MAGIC):
        return None
    return int.from_bytes(appdata[len(BIRTH_MAGIC):], "big")
