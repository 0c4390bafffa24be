"""Exporters without servers: known-answer layouts, key order, file rules, the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import FileStore


def stek_cli(*args: str, stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "stek.cli", *args], capture_output=True,
                          timeout=60)


def test_cli_export(tmp_path: Path) -> None:
    url = f"file:{tmp_path / 'ring.json'}"
    init_ring(FileStore(tmp_path / "ring.json"), Policy())
    r = stek_cli("export", "--store", url, "--format", "nginx", "--out", str(tmp_path / "n"))
    assert r.returncode == 0, r.stderr
    assert b"changed" in r.stdout and (tmp_path / "n" / "tickets.conf").exists()
    r = stek_cli("export", "--store", url, "--format", "nginx", "--out", str(tmp_path / "n"))
    assert b"unchanged" in r.stdout
    r = stek_cli("export", "--store", url, "--format", "haproxy")  # stdout is a pipe
    assert r.returncode == 0 and len(r.stdout.split()) == 3
    r = stek_cli("export", "--store", url, "--format", "nginx")
    assert r.returncode == 2 and b"--out" in r.stderr
    r = stek_cli("export", "--store", url, "--format", "apache", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    assert b"48-byte" in r.stderr and not (tmp_path / "a").exists()
