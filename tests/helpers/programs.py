"""Real programs the tests run: find them, or skip locally and fail in CI."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = bool(os.environ.get("CI"))
EXTRA_PATHS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin")


def find_program(name: str) -> str:
    """Path of a real program; skip locally, fail in CI, if it is missing."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_PATHS))
    if path is None:
        msg = f"{name} is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path
