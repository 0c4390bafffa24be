"""Key scopes: one ring and one rotation schedule, many trust domains.

Servers that must never resume each other's sessions (a frontend that
requires client certificates and one that does not, two virtual hosts, two
customers) can still share one ring: each serves a *scope*, and a scope's
ticket keys are derived from the ring's keys.  For a ring key
``(name, aes_key, hmac_key)`` and a scope ``S`` (1-64 characters from
``[A-Za-z0-9._-]``)::

    okm = HKDF-SHA256(salt = name,                  # RFC 5869 section 2.2
                      IKM  = hmac_key || aes_key,   # OpenSSL's key order
                      info = b"stek scope v1" || 0x00 || S (UTF-8),
                      L    = 16 + 2 * n)            # n = 32 (80-byte ring) or 16
    scoped name     = okm[0:16]
    scoped hmac_key = okm[16:16+n]
    scoped aes_key  = okm[16+n:16+2n]

and the instants are the ring key's.  So:

* a ticket sealed in one scope carries a key name no other scope knows: it
  is an unknown key (a clean full handshake), never a MAC failure;
* a scope's keys reveal nothing of the ring's or of another scope's keys
  (HKDF's outputs are independent pseudo-random keys, RFC 5869 section 1),
  so a key leaked from one scope's servers opens no other scope's tickets;
* the derived name is an HKDF output, not a function of public data alone,
  so it is as unpredictable as a random name (DESIGN: names never reveal
  secret material).

The derivation is pure and deterministic: every host, every exporter and any
other implementation derives the same keys (docs/trust.md has a byte-level
vector, checked by the tests).  No scope (``None``) serves the ring's keys as
they are.
"""

from __future__ import annotations

import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError
from .keyring import Keyring
from .keys import NAME_LEN, TicketKey

#: The HKDF ``info`` prefix; the NUL separates it from the scope name.
INFO_PREFIX = b"stek scope v1\x00"
#: Scope names: short, printable, safe in file names, URLs and metric labels.
_SCOPE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_scope(scope: str | None) -> str | None:
    """``scope`` if it is a valid scope name (or None); ConfigError otherwise."""
    if scope is None:
        return None
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise ConfigError(
            "a scope is 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"
        )
    return scope


def derive_key(key: TicketKey, scope: str) -> TicketKey:
    """The ticket key that ``key`` gives in ``scope`` (see the module docstring)."""
    n = len(key.aes_key)
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=NAME_LEN + 2 * n,
        salt=key.name,
        info=INFO_PREFIX + scope.encode("utf-8"),
    ).derive(key.hmac_key + key.aes_key)
    return TicketKey(
        name=okm[:NAME_LEN],
        aes_key=okm[NAME_LEN + n:],
        hmac_key=okm[NAME_LEN:NAME_LEN + n],
        activates_at=key.activates_at,
        retires_at=key.retires_at,
        expires_at=key.expires_at,
    )


def scoped(ring: Keyring, scope: str | None) -> Keyring:
    """``ring`` as the servers of ``scope`` see it: same policy, generation and windows.

    ``None`` is the ring itself.  The result is cached on the ring (it lives
    exactly as long as the snapshot it came from).
    """
    if check_scope(scope) is None:
        return ring
    cache_key = f"scope:{scope}"
    cached = ring._derived.get(cache_key)
    if cached is None:
        assert scope is not None
        cached = Keyring(ring.policy, tuple(derive_key(k, scope) for k in ring.keys),
                         ring.generation)
        ring._derived[cache_key] = cached
    return cached
