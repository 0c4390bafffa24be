"""The agent's timers are each agent's and target's own (keyword arguments, the module
constants as defaults): the store backoff, the permanent-error wait, the fleet store's
re-read and a target's retry, checked on passes made by hand with a still clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from stek.agent import (
    BACKOFF_MAX,
    BACKOFF_MIN,
    RESEED_CHECK,
    RETRY_MAX,
    RETRY_MIN,
    Agent,
    Target,
    TargetSpec,
)
from stek.errors import ConfigError, StoreCorrupt, StoreUnavailable
from stek.keyring import Keyring
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores.base import Mutator
from stek.stores.memory import MemoryStore

T0 = 1_900_000_000.0


def still() -> float:
    return T0


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class FlakyStore(MemoryStore):
    """A MemoryStore that raises ``error`` from every read and update while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None

    def read(self) -> Keyring:
        if self.error is not None:
            raise self.error
        return super().read()

    def update(self, mutate: Mutator) -> Keyring:
        if self.error is not None:
            raise self.error
        return super().update(mutate)


def waits(agent: Agent, n: int) -> list[float]:
    return [agent.run_pass() for _ in range(n)]


def test_store_backoff_doubles_from_the_injected_minimum_caps_and_resets() -> None:
    store = FlakyStore()
    store.error = StoreUnavailable("memory: connection refused")
    agent = Agent(store, clock=still, backoff=(0.125, 0.5))
    assert waits(agent, 5) == [0.125, 0.25, 0.5, 0.5, 0.5]
    assert agent.store_failures == 5 and agent.store_error is not None
    store.error = None
    agent.run_pass()  # a good pass
    assert agent.store_error is None and agent.ring is not None
    store.error = StoreUnavailable("memory: connection refused")
    assert waits(agent, 3) == [0.125, 0.25, 0.5], "back to the minimum after a good pass"


def test_permanent_store_error_waits_the_injected_maximum() -> None:
    store = FlakyStore()
    store.error = StoreCorrupt("memory: not a keyring")
    agent = Agent(store, clock=still, backoff=(0.125, 0.75))
    assert waits(agent, 2) == [0.75, 0.75]
    assert agent.store_error_permanent


def test_run_waits_the_backoff_between_passes() -> None:
    """run() itself: each failed pass is followed by a wait of the backoff."""
    store = FlakyStore()
    store.error = StoreUnavailable("memory: connection refused")
    agent = Agent(store, clock=still, backoff=(0.125, 0.25))
    seen: list[float] = []

    class Wake:
        """The agent's wake event, recording each wait instead of sleeping."""

        def wait(self, timeout: float) -> bool:
            seen.append(timeout)
            if len(seen) == 4:
                agent.stop()
            return False

        def set(self) -> None:
            pass

        def clear(self) -> None:
            pass

    agent.wake_event = Wake()  # type: ignore[assignment]
    agent.run()
    assert seen == [0.125, 0.25, 0.25, 0.25]


def test_defaults_are_the_module_constants(tmp_path: Path) -> None:
    agent = Agent(MemoryStore())
    assert (agent.backoff_min, agent.backoff_max) == (BACKOFF_MIN, BACKOFF_MAX)
    assert agent.reseed_check == RESEED_CHECK
    target = Target(TargetSpec("nginx", tmp_path / "n"))
    assert (target.retry_min, target.retry_max) == (RETRY_MIN, RETRY_MAX)


def test_fleet_store_is_reread_within_the_injected_reseed_check() -> None:
    class Fleet(MemoryStore):
        last_ring = None  # what marks a store that can be emptied behind the agent's back

    store = Fleet()
    init_ring(store, Policy(), now=T0)
    assert Agent(store, clock=still, interval=30).step() <= RESEED_CHECK + 0.1
    assert Agent(store, clock=still, interval=30, reseed_check=0.25).step() <= 0.26


def test_target_retry_doubles_and_caps_with_injected_bounds(tmp_path: Path) -> None:
    """An export that fails (a file where its directory should be), then succeeds."""
    store = MemoryStore()
    init_ring(store, Policy(), now=T0)
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    target = Target(TargetSpec("nginx", blocker / "nginx"), retry_min=0.125, retry_max=0.5)
    clock = Clock()
    agent = Agent(store, clock=clock, targets=[target])
    delays = []
    for _ in range(5):
        wait = agent.step()
        assert target.export_error is not None and target.retry_at is not None
        delays.append(target.retry_at - clock.t)
        assert wait == pytest.approx(delays[-1] + 0.01), "the next pass is the retry"
        clock.t = target.retry_at
    assert delays == [0.125, 0.25, 0.5, 0.5, 0.5]
    blocker.unlink()
    blocker.mkdir()
    agent.step()
    assert target.export_error is None and target.retry_at is None
    (blocker / "nginx").rename(tmp_path / "elsewhere")
    blocker.rmdir()
    blocker.write_text("not a directory")
    agent.step()
    assert target.retry_at == clock.t + 0.125, "back to the minimum after a good pass"


def test_timer_bounds_are_checked(tmp_path: Path) -> None:
    store = MemoryStore()
    for backoff in [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)]:
        with pytest.raises(ConfigError, match="backoff"):
            Agent(store, backoff=backoff)
    with pytest.raises(ConfigError, match="reseed_check"):
        Agent(store, reseed_check=0)
    spec = TargetSpec("nginx", tmp_path / "n")
    for lo, hi in [(0.0, 1.0), (2.0, 1.0)]:
        with pytest.raises(ConfigError, match="retry_min <= retry_max"):
            Target(spec, retry_min=lo, retry_max=hi)
