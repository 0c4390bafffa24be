"""A duration without a unit is refused wherever stek reads one: CLI options and URL options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stek._duration import parse_seconds
from stek.errors import ConfigError
from stek.stores import FileStore


def stek(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STEK_STORE"}
    return subprocess.run([sys.executable, "-m", "stek.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.parametrize(("option", "value"), [
    ("--accept-for", "12"), ("--rotate-every", "3600"), ("--publish-ahead", "600"),
])
def test_init_refuses_a_bare_number_and_writes_nothing(tmp_path: Path, option: str,
                                                       value: str) -> None:
    ring = tmp_path / "ring.json"
    r = stek("init", "--store", f"file:{ring}", option, value)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert "no unit" in lines[-1] and f"{value}s" in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not ring.exists()


def test_init_with_units_still_works(tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    r = stek("init", "--store", f"file:{ring}", "--accept-for", "12h")
    assert r.returncode == 0, r.stderr
    assert FileStore(ring).read().policy.accept_for == 12 * 3600


@pytest.mark.parametrize("args", [
    ["agent", "--interval", "30"], ["agent", "--reload-timeout", "60"],
    ["probe", "--watch", "60", "127.0.0.1:1"], ["probe", "--timeout", "5", "127.0.0.1:1"],
])
def test_other_commands_refuse_a_bare_number(tmp_path: Path, args: list[str]) -> None:
    r = stek(*args[:1], "--store", f"file:{tmp_path / 'ring.json'}", *args[1:])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no unit" in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "ring.json").exists()


def test_url_option_refuses_a_bare_number(tmp_path: Path) -> None:
    # Parsed before any connection: port 1 is never reached.
    r = stek("status", "--store",
             "redis://127.0.0.1:1/0?wait_timeout=2")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "wait_timeout" in r.stderr and "no unit" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize(("text", "seconds"), [("200ms", 0.2), ("1.5s", 1.5), ("2m", 120.0),
                                               (".5s", 0.5)])
def test_parse_seconds_takes_units(text: str, seconds: float) -> None:
    assert parse_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2", "0.5", "", "1x", "-1s", "1 s"])
def test_parse_seconds_refuses(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_seconds(text)
