"""The RFC 5077 ticket codec (stek.ticket): known answers, every failure, properties.

Real-handshake interop (OpenSSL-issued tickets opened here, codec-sealed
tickets accepted by OpenSSL) is in test_ticket_interop.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.programs import find_program
from helpers.ticket_vectors import IV, NAME, SIZES, STATE, VECTORS, vector_key
from stek.ticket import (
    seal,
)


@SIZES
def test_vector_matches_openssl_cli(size: int, tmp_path: Path) -> None:
    """The same ticket built by the openssl command line (enc + dgst -mac HMAC)."""
    exe = find_program("openssl")
    aes, mac, expected = VECTORS[size]
    (tmp_path / "state").write_bytes(STATE)
    ct = subprocess.run(
        [exe, "enc", f"-aes-{len(aes) * 8}-cbc", "-K", aes.hex(), "-iv", IV.hex(),
         "-in", str(tmp_path / "state")], capture_output=True, check=True).stdout
    (tmp_path / "signed").write_bytes(NAME + IV + ct)
    tag = subprocess.run(
        [exe, "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{mac.hex()}", "-binary",
         str(tmp_path / "signed")], capture_output=True, check=True).stdout
    assert (NAME + IV + ct + tag).hex() == expected
    assert seal(vector_key(size), STATE, IV) == NAME + IV + ct + tag
