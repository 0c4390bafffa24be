"""Waiting for a condition, with a bound: never a fixed sleep that hopes."""

from __future__ import annotations

import time
from typing import Any


def wait_until(pred: Any, timeout: float, step: float = 0.02) -> float:
    """Seconds until pred() held; fails after timeout."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - t0
