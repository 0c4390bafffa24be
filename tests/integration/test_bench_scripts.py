"""The benchmarks run without the test suite's dependencies.

bench/README.md promises that every script runs on its own with stek's
runtime dependencies only (the standard library, cryptography, and redis
where Redis is used): the server launchers they share with the tests
(tests/helpers/store_servers.py, pki.py, ports.py, programs.py) import no
pytest, hypothesis or pyOpenSSL.  Each script runs here in a process where
those cannot be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.programs import find_program

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench"
SCRIPTS = sorted(BENCH.glob("bench_*.py"))

#: The test suite's own dependencies (the [test] extra), never a benchmark's.
BLOCKED = ("pytest", "_pytest", "hypothesis", "OpenSSL")

#: ``python bench/NAME.py ARGS`` with BLOCKED unimportable.  With ``--help``
#: it also runs every import statement of the script, those inside functions
#: too (which ``--help`` never reaches), after the script set up sys.path.
WRAPPER = rf"""
import ast, runpy, sys
from pathlib import Path

for name in {BLOCKED!r}:
    sys.modules[name] = None  # "import name" raises ImportError
script = Path(sys.argv[1])
sys.argv = sys.argv[1:]
sys.path[0] = str(script.parent)  # as "python bench/NAME.py" has it
try:
    runpy.run_path(str(script), run_name="__main__")
except SystemExit as e:
    if e.code not in (0, None):
        raise
if sys.argv[1:] == ["--help"]:
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and \
                getattr(node, "module", None) != "__future__":
            exec(ast.unparse(node), {{}})
"""


def run_bench(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # stek from this checkout, as the scripts that do not set sys.path expect;
    # never tests/ (a script that needs helpers puts it on sys.path itself).
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"),
                                                    env.get("PYTHONPATH", "")] if p)
    return subprocess.run([sys.executable, "-c", WRAPPER, str(script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_every_benchmark_is_covered() -> None:
    assert {s.name for s in SCRIPTS} >= {"bench_propagation.py", "bench_readers.py",
                                         "bench_fleet_scale.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_benchmark_imports_without_the_test_dependencies(script: Path) -> None:
    proc = run_bench(script, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout


@pytest.mark.servers
def test_benchmark_starts_its_redis_server_without_pytest() -> None:
    """bench_readers.py, its smallest run: one installation on a real redis-server
    that the shared launcher (helpers.store_servers.RedisServer) starts."""
    find_program("redis-server")  # skip locally, fail in CI, as every server test
    find_program("openssl")  # the script's certificate
    proc = run_bench(BENCH / "bench_readers.py", "--n", "1", "--store", "redis")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("redis")]
    assert len(rows) == 1, proc.stdout
    assert rows[0][1] == "1"  # N
