"""A short atheris run of fuzz/fuzz_ticket.py (the long-run recipe is in that file).

Invariant under test: any bytes give a decoded ticket/session or InvalidTicket,
never another exception, and seal/open round-trips; libFuzzer exits non-zero
and writes a crash-* file on the first violation.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = ROOT / "fuzz" / "fuzz_ticket.py"
SEEDS = ROOT / "fuzz" / "seeds"
README = ROOT / "README.md"


def need_atheris() -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        # atheris is the [fuzz] extra: .ci/run installs it wherever a wheel
        # exists and then sets STEK_REQUIRE_FUZZ=1, so CI never skips silently.
        if os.environ.get("STEK_REQUIRE_FUZZ") == "1":
            pytest.fail("atheris is not installed (pip install -e '.[fuzz]')")
        pytest.skip("atheris is not installed (the [fuzz] extra)")


def test_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    """20000 runs from the seeds: exit 0, no crash file."""
    need_atheris()
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
    # libFuzzer may report a few more runs than -runs asked for (seen once:
    # "Done 20009 runs"); fewer would mean the run was cut short.
    done = re.search(r"^Done (\d+) runs", proc.stderr, re.MULTILINE)
    assert done is not None and int(done.group(1)) >= 20000, tail
    assert not list(tmp_path.glob("crash-*")), tail


def test_seeds_exercise_every_mode() -> None:
    """One seed per mode byte (0-5), so the short run starts past the length checks."""
    modes = {p.read_bytes()[0] % 6 for p in SEEDS.iterdir()}
    assert modes == {0, 1, 2, 3, 4, 5}


def readme_fuzz_commands() -> list[list[str]]:
    return [shlex.split(line) for line in README.read_text().splitlines()
            if "fuzz/fuzz_ticket.py -" in line and not line.startswith(("#", "`"))]


def test_fuzz_target_runs_the_readme_way(tmp_path: Path) -> None:
    """The README's long-run command, shortened to 2000 runs, executes the target itself
    (shebang and executable bit) from the repository root: exit 0, no crash."""
    need_atheris()
    commands = readme_fuzz_commands()
    assert commands, "the README shows how to run the fuzz target"
    for argv in commands:
        assert argv[0] == "fuzz/fuzz_ticket.py", argv
    argv = commands[0]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    args = [a for a in argv[1:] if not a.startswith(("-max_total_time", "-jobs", "-workers"))]
    args = [str(corpus) if a == "/tmp/stek-corpus" else a for a in args]
    # The reader's shell: the venv's python3 first on PATH, the command run as written.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([argv[0], *args, "-runs=2000", "-seed=2",
                           f"-artifact_prefix={tmp_path}/"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Done 2000 runs" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*"))
