"""A ring key laid out for libssl: the buffers and OSSL_PARAMs the ctypes
ticket callback hands OpenSSL, built once per key rather than per handshake.

HAZMAT, like :mod:`stek.hazmat.libssl`, whose binding it is built against.
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, c_char_p, c_size_t, c_uint, c_void_p
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .libssl import LibSSL

#: openssl/core.h: OSSL_PARAM data types.
OSSL_PARAM_UTF8_STRING = 4
OSSL_PARAM_OCTET_STRING = 5


class OSSL_PARAM(Structure):
    """openssl/core.h ``struct ossl_param_st``."""

    _fields_ = (
        ("key", c_char_p),
        ("data_type", c_uint),
        ("data", c_void_p),
        ("data_size", c_size_t),
        ("return_size", c_size_t),
    )


class PreparedKey:
    """A ring key laid out for C: buffers and OSSL_PARAMs built once, not per handshake."""

    __slots__ = ("_hold", "activates_at", "aes", "cipher", "expires_at", "hmac",
                 "mac_params", "name", "retires_at")

    def __init__(self, lib: LibSSL, name: bytes, aes: bytes, hmac: bytes,
                 activates_at: int, retires_at: int, expires_at: int) -> None:
        self.name = name
        self.aes = aes  # passed as c_char_p: ctypes hands C the bytes' own buffer
        self.hmac = hmac
        self.cipher = lib.aes_256_cbc if len(aes) == 32 else lib.aes_128_cbc
        self.activates_at = activates_at
        self.retires_at = retires_at
        self.expires_at = expires_at
        if lib.openssl3:
            # EVP_MAC-HMAC(7): params "digest" (UTF8 string) and "key" (octet string).
            params = (OSSL_PARAM * 3)()
            # Keep the buffers the params point into alive as long as the params.
            self._hold: tuple[bytes, ...] = (b"SHA256", hmac)
            params[0] = OSSL_PARAM(b"digest", OSSL_PARAM_UTF8_STRING,
                                   ctypes.cast(c_char_p(b"SHA256"), c_void_p), 6, 0)
            params[1] = OSSL_PARAM(b"key", OSSL_PARAM_OCTET_STRING,
                                   ctypes.cast(c_char_p(hmac), c_void_p), len(hmac), 0)
            self.mac_params: Any = params
        else:
            self._hold = ()
            self.mac_params = None

    def __repr__(self) -> str:
        return f"PreparedKey(name={self.name.hex()})"

__all__ = ["OSSL_PARAM", "OSSL_PARAM_OCTET_STRING", "OSSL_PARAM_UTF8_STRING", "PreparedKey"]
