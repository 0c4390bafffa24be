"""Apache httpd: ``SSLSessionTicketKeyFile``, one 48-byte key.

Checked against mod_ssl (``modules/ssl/ssl_engine_init.c``
``ssl_init_ticket_key``, ``ssl_private.h`` ``modssl_ticket_key_t``): the file
must hold exactly ``TLSEXT_TICKET_KEY_LEN`` = 48 bytes, read as
``key_name[0:16]``, ``hmac_secret[16:32]``, ``aes_key[32:48]`` (HMAC
*before* AES, unlike nginx's 48-byte files), used with AES-128-CBC and
HMAC-SHA256.  mod_ssl holds that one key: it encrypts with it and decrypts
only tickets bearing its name.

Consequences, documented in docs/exporters.md:

* only a 48-byte ring can be exported: an 80-byte key cannot be cut down
  without changing the cipher, and a key's material must never be reused
  under another layout (GnuTLS CVE-2020-13777 class);
* the file holds the *encrypting* key; when it changes (once per
  ``rotate_every``) Apache must be reloaded, and tickets sealed under the
  previous key stop resuming on that server (a full handshake, then a new
  ticket): Apache cannot hold a pre-published or a decrypt-only key;
* Debian's mod_ssl 2.4.71 built against OpenSSL 3 does not use the file's
  HMAC bytes (it passes OpenSSL a pointer into a stack buffer; see
  docs/exporters.md and tests/integration/test_export_apache.py): the layout is right,
  the server is not.
"""

from __future__ import annotations

from pathlib import Path

from ..keyring import Keyring
from ..keys import TicketKey
from . import ExportError, Rendered, serving_order


def key_bytes(key: TicketKey) -> bytes:
    if key.size != 48:
        raise ExportError(_REFUSAL)
    return key.name + key.hmac_key + key.aes_key


_REFUSAL = (
    "Apache's SSLSessionTicketKeyFile holds exactly one 48-byte key (AES-128, mod_ssl "
    "ssl_init_ticket_key), and this ring holds 80-byte keys (AES-256): stek will not cut or "
    "reuse their material. Keep a separate ring for Apache, created with "
    "'stek init --key-size 48 --store URL' (it caps resumed sessions at 128-bit security)"
)


def render(ring: Keyring, now: float, out: Path) -> Rendered:
    if ring.policy.key_size != 48:
        raise ExportError(_REFUSAL)
    enc = serving_order(ring, now).encrypting
    return Rendered("apache", (("", key_bytes(enc)),), encrypting=enc.name)
