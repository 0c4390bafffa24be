"""A missing program: under pytest a skip locally and a failure in CI, elsewhere an exit.

The benchmarks start their servers with the tests' launchers
(helpers.store_servers) in processes without pytest.
"""

from __future__ import annotations

import shutil
import sys

import pytest

from helpers import programs


@pytest.fixture
def nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)


@pytest.mark.usefixtures("nothing_installed")
def test_a_missing_program_skips_the_test_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(programs, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        programs.find_program("redis-server")


@pytest.mark.usefixtures("nothing_installed")
def test_a_missing_program_fails_the_test_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(programs, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="redis-server is not installed"):
        programs.find_program("redis-server")


@pytest.mark.usefixtures("nothing_installed")
def test_a_missing_program_ends_a_process_without_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pytest", None)  # as in a benchmark
    monkeypatch.setattr(sys, "argv", ["bench/bench_readers.py"])
    with pytest.raises(SystemExit, match=r"^bench_readers\.py: redis-server is not installed$"):
        programs.find_program("redis-server")


def test_an_installed_program_is_found() -> None:
    assert programs.find_program("sh").endswith("/sh")
