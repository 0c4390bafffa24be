"""A password file for the store-URL tests, with a password that needs URL quoting."""

from __future__ import annotations

import os
from pathlib import Path

SECRET = "pa/ss?w@rd#1"


def secret_file(tmp_path: Path, value: str = SECRET) -> Path:
    p = tmp_path / "pw"
    p.write_text(value + "\n")
    os.chmod(p, 0o600)
    return p
