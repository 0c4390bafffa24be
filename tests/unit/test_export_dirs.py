"""Exports refuse existing directories another user owns or may write."""

from __future__ import annotations

import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from stek.export import ExportError, render, write
from stek.keyring import Keyring
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import MemoryStore


def _ring() -> Keyring:
    return init_ring(MemoryStore(), Policy()).ring


@pytest.mark.parametrize("fmt", ["nginx", "haproxy"])
def test_directory_owned_by_another_user_is_refused(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "keys"
    out.mkdir(mode=0o700)
    os.chown(out, pwd.getpwnam("nobody").pw_uid, -1)
    target = out if fmt == "nginx" else out / "tickets.keys"
    rendered = render(fmt, _ring(), time.time(), target)
    with pytest.raises(ExportError, match="owned by uid") as info:
        write(rendered, target)
    assert "\n" not in str(info.value)
    assert os.listdir(out) == []


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777])
def test_group_or_world_writable_directory_is_refused(tmp_path: Path, mode: int) -> None:
    out = tmp_path / "keys"
    out.mkdir()
    os.chmod(out, mode)
    rendered = render("nginx", _ring(), time.time(), out)
    with pytest.raises(ExportError, match="writable by"):
        write(rendered, out)
    assert os.listdir(out) == []


def test_new_export_directories_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    old = os.umask(0)
    try:
        result = write(render("nginx", _ring(), time.time(), out), out)
    finally:
        os.umask(old)
    assert result.created == out
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o700
