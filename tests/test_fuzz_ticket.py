"""A short atheris run of fuzz/fuzz_ticket.py (the long-run recipe is in that file).

Invariant under test: any bytes give a decoded ticket/session or InvalidTicket,
never another exception, and seal/open round-trips; libFuzzer exits non-zero
and writes a crash-* file on the first violation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "fuzz" / "fuzz_ticket.py"
SEEDS = ROOT / "fuzz" / "seeds"


def test_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    """20000 runs from the seeds: exit 0, no crash file."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        # atheris is the [fuzz] extra: .ci/run installs it wherever a wheel
        # exists and then sets STEK_REQUIRE_FUZZ=1, so CI never skips silently.
        if os.environ.get("STEK_REQUIRE_FUZZ") == "1":
            pytest.fail("atheris is not installed (pip install -e '.[fuzz]')")
        pytest.skip("atheris is not installed (the [fuzz] extra)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [sys.executable, str(TARGET), "-runs=20000", "-seed=1", f"-artifact_prefix={tmp_path}/",
         str(corpus), str(SEEDS)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    tail = "\n".join(line for line in proc.stderr.splitlines()
                     if not line.startswith("INFO: Instrumenting"))[-3000:]
    assert proc.returncode == 0, tail
    assert "Done 20000 runs" in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*")), tail


def test_seeds_exercise_every_mode() -> None:
    """One seed per mode byte (0-4), so the short run starts past the length checks."""
    modes = {p.read_bytes()[0] % 5 for p in SEEDS.iterdir()}
    assert modes == {0, 1, 2, 3, 4}
