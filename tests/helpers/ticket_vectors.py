"""Pinned ticket test vectors: a session state, keys and the tickets they seal to."""

from __future__ import annotations

import pytest

from stek.keys import TicketKey

NAME = bytes(range(0xA0, 0xB0))
IV = bytes(range(0x10, 0x20))
#: A minimal TLS 1.3 SSL_SESSION (i2d form): version 1, 0x0304, suite 0x1302,
#: master key 48 x 0x5a, time 1700000000, timeout 3600, sid_ctx "Python\0".
STATE = (
    bytes.fromhex("3065" "020101" "0202" "0304" "04021302" "0400" "0430") + b"\x5a" * 48
    + bytes.fromhex("a106" "02046553f100" "a204" "02020e10" "a409" "0407" "507974686f6e00"
                    "ae06" "020401020304" "af03" "020100")
)
#: Computed once with the OpenSSL command line, not with stek:
#:   openssl enc -aes-256-cbc -K <aes> -iv <iv> -in state.der   (PKCS#7 by default)
#:   openssl dgst -sha256 -mac HMAC -macopt hexkey:<hmac> (name | iv | ciphertext)
#: (test_vector_matches_openssl_cli re-derives them with the same commands).
VECTORS = {
    80: (
        bytes(range(1, 33)),
        bytes(range(0x41, 0x61)),
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf101112131415161718191a1b1c1d1e1f56def4e846ce77740e"
        "f6ec181326d1c67c97a3661ad7df7b4c73c4b9bdfd52961b0c8c4a8e01cc7bdaa6c5022ee71e50cd8f"
        "f30c98bad4cd69d585d22673c811bde0e28414e57272fc869d526e698661c57bed9c9c76b5137babd9"
        "ec3f759b0a7e75fce1ffe329efea7b72020e3c1dbe87af0302339491ad44fbe76fb9590d884f83d51e"
        "a8cf0d3359aa13e40b1963b6",
    ),
    48: (
        bytes(range(1, 17)),
        bytes(range(0x41, 0x51)),
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf101112131415161718191a1b1c1d1e1f65d43f9b0890a6b1b3"
        "d263e0645d65bdad8b43f746fdf7c930ccc067bb20db9ae4b37fe3189e18557cb93e9506194c2815f2"
        "784e57f431c8b5ffcf8aa890ff6825238e7196c73559912771895280a57c38734050ca9d3af192a94d"
        "48094b33c2380ef97da948cd00a9a22d27175e6c66917fbfacaa066757026812f746058d46c6b5bb52"
        "4c700e1b06ce6f3f682dfa32",
    ),
}
SIZES = pytest.mark.parametrize("size", [80, 48])


def vector_key(size: int) -> TicketKey:
    aes, mac, _ = VECTORS[size]
    return TicketKey(NAME, aes, mac, 0, 100, 200)
