"""Secret-looking store URL options never reach stek's output, however they are spelt."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SECRET = "hunter2-Zq7"


def stek(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEK_")}
    return subprocess.run([sys.executable, "-m", "stek.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.parametrize("option", ["Password", "PASSWORD", "passwd", "pass%77ord",
                                    "Sentinel_Password", "auth_token", "kek", "pass"])
@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:1/0", "etcd://127.0.0.1:1/p"])
def test_secret_option_is_refused_without_its_value(scheme: str, option: str) -> None:
    r = stek("status", "--store", f"{scheme}?prefix=x&{option}={SECRET}")
    assert r.returncode == 2, r.stdout + r.stderr
    assert SECRET not in r.stderr + r.stdout
    line, = r.stderr.strip().splitlines()
    assert line.startswith("stek: error: ") and "query string" in line, line


@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:1/0", "etcd://127.0.0.1:1/p"])
def test_unknown_option_is_named_without_its_value(scheme: str) -> None:
    r = stek("status", "--store", f"{scheme}?colour={SECRET}")
    assert r.returncode == 2, r.stdout + r.stderr
    line, = r.stderr.strip().splitlines()
    assert "unknown option(s) colour" in line and SECRET not in line, line


def test_unparsable_url_hides_secret_looking_options() -> None:
    r = stek("status", "--store", f"bogus://h/x?PassWord={SECRET}&pass%77d={SECRET}")
    assert r.returncode == 2
    assert SECRET not in r.stderr and "PassWord=***" in r.stderr, r.stderr


def test_path_options_are_still_accepted_and_shown(tmp_path: object) -> None:
    # kek_file= and password_file= hold paths, not secrets: refused only for what they name.
    r = stek("status", "--store", "redis://127.0.0.1:1/0?password_file=/nonexistent/pw")
    assert r.returncode != 0
    assert "/nonexistent/pw" in r.stderr and "query string" not in r.stderr, r.stderr
