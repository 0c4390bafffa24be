"""The keyring the Python ticket callback answers from: each key prepared
for libssl once, the encrypting key cached between window boundaries."""

from __future__ import annotations

import bisect

from .hazmat.libssl import LibSSL, PreparedKey
from .keyring import Keyring
from .schedule import encrypting_key


class _Snapshot:
    """A keyring prepared for C, with the encrypting key cached between boundaries."""

    __slots__ = ("_enc", "boundaries", "by_name", "keys", "ring")

    def __init__(self, lib: LibSSL, ring: Keyring) -> None:
        self.ring = ring
        self.keys = [
            PreparedKey(lib, k.name, k.aes_key, k.hmac_key, k.activates_at, k.retires_at,
                        k.expires_at)
            for k in ring.keys
        ]
        self.by_name = {k.name: k for k in self.keys}
        self.boundaries = sorted({t for k in self.keys for t in (k.activates_at, k.retires_at)})
        self._enc: tuple[float, float, PreparedKey | None] = (1.0, 0.0, None)

    def encrypting(self, now: float) -> PreparedKey | None:
        lo, hi, key = self._enc
        if lo <= now < hi:
            return key
        # The answer is constant between two consecutive window boundaries.
        i = bisect.bisect_right(self.boundaries, now)
        lo = self.boundaries[i - 1] if i > 0 else float("-inf")
        hi = self.boundaries[i] if i < len(self.boundaries) else float("inf")
        key = encrypting_key(self.keys, now)
        self._enc = (lo, hi, key)
        return key
