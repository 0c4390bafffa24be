"""OpenSSL: raw keys for ``SSL_CTX_set_tlsext_ticket_keys()``.

``SSL_CTRL_SET_TLSEXT_TICKET_KEYS`` (``ssl/s3_lib.c``) copies
``tick_key_name[0:16]``, ``tick_hmac_key[16:48]``, ``tick_aes_key[48:80]``:
80 bytes since OpenSSL 1.1.0 (AES-256, 32-byte HMAC key).  OpenSSL 1.0.x
took 48 bytes in the same order (name, HMAC16, AES16), which is what a
48-byte ring exports.

The file is the concatenation of the ring's live keys in the serving order
(encrypting key first, then pending, then decrypting).  OpenSSL's control
takes a single key: feed it the first 80 (or 48) bytes.  Applications with
their own callback can read every record to decrypt older tickets.
"""

from __future__ import annotations

from pathlib import Path

from ..keyring import Keyring
from ..keys import TicketKey
from . import Rendered, serving_order


def key_bytes(key: TicketKey) -> bytes:
    return key.name + key.hmac_key + key.aes_key


def render(ring: Keyring, now: float, out: Path) -> Rendered:
    order = serving_order(ring, now)
    data = b"".join(key_bytes(k) for k in order.keys)
    return Rendered("openssl", (("", data),), encrypting=order.encrypting.name)
