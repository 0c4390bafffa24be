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


def holds_within(pred: Any, timeout: float = 10.0, step: float = 0.05) -> bool:
    """True once pred() holds, False if it still does not after ``timeout`` seconds
    (for an ``assert holds_within(...), detail`` that shows what was seen)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def watching(inst: Any) -> bool:
    """True once ``inst``'s store subscription is in place, so that a change written
    from now on is announced to it (stek._refresh's group: ``watching``)."""
    group = inst._membership.group
    return group is not None and bool(group.watching)


def wait_watching(inst: Any, timeout: float = 30.0) -> float:
    """Seconds until ``inst`` (an Installation) watches its store; fails after timeout."""
    return wait_until(lambda: watching(inst), timeout)
