"""The fast tier's rule, enforced: a unit test starts no process and sleeps under a second.

A test that needs a real program (openssl, a server) or a fork belongs in
tests/integration; a wait of a second or more belongs behind an injected clock.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def in_process_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a unit test starts no process: move it to tests/integration")

    sleep = time.sleep

    def short_sleep(seconds: float) -> None:
        assert seconds < 1, "a unit test sleeps under a second: inject a clock instead"
        sleep(seconds)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(os, "fork", no_process)
    monkeypatch.setattr(time, "sleep", short_sleep)
    yield
