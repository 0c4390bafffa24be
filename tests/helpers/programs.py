"""Real programs the tests and the benchmarks run: find them, or say which is missing.

Under pytest a missing program skips the test locally and fails it in CI
(``CI`` set).  Anywhere else (the scripts in bench/, which run without the
test suite's dependencies) it ends the process with a message.  pytest is
never imported here: it is used only when the running process already has it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

IN_CI = bool(os.environ.get("CI"))
EXTRA_PATHS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin")


def find_program(name: str) -> str:
    """Path of a real program; if it is missing: skip locally, fail in CI, exit outside pytest."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_PATHS))
    if path is None:
        _missing(name)
    return path


def _missing(name: str) -> NoReturn:
    pytest = sys.modules.get("pytest")  # loaded in every pytest run, never by a benchmark
    if pytest is None:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {name} is not installed")
    msg = f"{name} is not installed (.ci/run installs it)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)
