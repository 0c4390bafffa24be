"""deploy/systemd/stek-agent.service: systemd's own checker accepts it, without a warning,
and it keeps the confinement docs/deploy.md promises."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "stek-agent.service"


def service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify needs ExecStart's program to exist: point it at this stek.
    stek = shutil.which("stek")
    assert stek is not None, "the stek console script is installed"
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/stek agent " in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/usr/local/bin/stek", stek))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt setting is reported."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    stek = shutil.which("stek")
    assert stek is not None
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/stek", stek)
                    .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert "Unknown key" in r.stderr


def test_the_unit_is_confined() -> None:
    s = service()
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes", "RuntimeDirectory": "stek", "User": "stek",
                       "ProtectHome": "yes", "CapabilityBoundingSet": "",
                       "RuntimeDirectoryPreserve": "yes", "UMask": "0077"}.items():
        assert s.get(f"Service.{key}") == [value], key
    # No write access beyond its RuntimeDirectory: no ReadWritePaths, no StateDirectory.
    assert not [k for k in s if k.startswith(("Service.ReadWritePaths",
                                              "Service.StateDirectory"))]
    assert "Service.DynamicUser" not in s  # a fixed user: servers and workers can name it
    assert s["Service.ExecStart"][0].split()[1] == "agent"
