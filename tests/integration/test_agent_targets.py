"""The agent's targets, with an injected clock: export, reload once per change, retry, warn."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import pytest

from stek.agent import (
    RETRY_MIN,
    Agent,
    Target,
    TargetSpec,
    build_targets,
    publish_ahead_warnings,
    run_command,
)
from stek.cli.agent import _ordered_targets
from stek.errors import ConfigError
from stek.keyring import Keyring
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import FileStore

SLOT = 600
T0 = (1_900_000_000 // SLOT) * SLOT + 1
POLICY = Policy(rotate_every=SLOT, accept_for=5 * SLOT, publish_ahead=60)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def setup(tmp_path: Path, reload: str) -> tuple[FileStore, Clock, Target, Agent]:
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, POLICY, now=T0)
    clock = Clock(T0)
    target = Target(TargetSpec("nginx", tmp_path / "nginx", reloads=(reload,)))
    return store, clock, target, Agent(store, clock=clock, targets=[target])


def first_retirement(ring: Keyring) -> int:
    return min(k.retires_at for k in ring.keys)


def test_reload_runs_once_per_change(tmp_path: Path) -> None:
    count = tmp_path / "reloads"
    store, clock, target, agent = setup(tmp_path, f"echo x >> {count}")
    agent.step()
    agent.step()
    clock.t += 10
    agent.step()
    assert count.read_text().count("x") == 1 and target.applies == 1
    retires = first_retirement(store.read())
    clock.t = retires - 30  # the next key is published: tickets.conf changes
    agent.step()
    agent.step()
    clock.t = retires + 1  # it activates: the order changes
    agent.step()
    agent.step()
    assert count.read_text().count("x") == 3 and target.changes == 3


def test_failed_reload_is_retried_until_it_succeeds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flag = tmp_path / "reload-may-succeed"
    _, clock, target, agent = setup(tmp_path, f"test -e {flag} || exit 3")
    caplog.set_level(logging.INFO, logger="stek.agent")
    wait = agent.step()
    assert target.apply_failures == 1 and target.apply_owed
    assert "exited 3" in caplog.text
    assert wait <= RETRY_MIN + 0.1, "the next pass comes when the retry is due"
    agent.step()  # before the retry time: not run again
    assert target.apply_failures == 1
    clock.t += 1.5
    agent.step()
    assert target.apply_failures == 2 and target.apply_owed
    assert target.retry_at is not None and target.retry_at - clock.t == pytest.approx(2)
    flag.touch()
    clock.t += 2
    agent.step()
    assert not target.apply_owed and target.applies == 1 and target.last_error is None
    assert target.apply_failures == 2 and target.last_apply_ok == clock.t
    assert "reload exited 0" in caplog.text
    assert agent.health() == []


def test_a_new_change_is_applied_at_once_even_during_backoff(tmp_path: Path) -> None:
    count = tmp_path / "runs"
    store, clock, target, agent = setup(tmp_path, f"echo x >> {count}; exit 1")
    agent.step()
    for _ in range(4):  # backoff grows: 1, 2, 4, 8 s
        assert target.retry_at is not None
        clock.t = target.retry_at
        agent.step()
    runs = count.read_text().count("x")
    clock.t = first_retirement(store.read()) - 30  # a new key is published
    agent.step()
    assert count.read_text().count("x") == runs + 1


def test_health_lists_failing_targets(tmp_path: Path) -> None:
    _, _, target, agent = setup(tmp_path, "exit 4")
    agent.step()
    problems = agent.health()
    assert any(target.name in p and "exited 4" in p for p in problems)


def test_export_failure_is_reported_and_retried(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy(rotate_every=SLOT, accept_for=5 * SLOT, publish_ahead=60), now=T0)
    target = Target(TargetSpec("apache", tmp_path / "apache.key", reloads=("true",)))
    agent = Agent(store, clock=Clock(T0), targets=[target])
    agent.step()  # an 80-byte ring cannot be exported for Apache
    assert target.export_failures == 1 and "48-byte" in (target.last_error or "")
    assert target.retry_at is not None and not (tmp_path / "apache.key").exists()


def test_logs_never_hold_key_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store, clock, _, agent = setup(tmp_path, "exit 2")
    agent.step()
    clock.t = first_retirement(store.read()) + 1
    agent.step()
    for k in store.read().keys:
        for secret in (k.aes_key, k.hmac_key):
            assert secret.hex() not in caplog.text
            assert secret.hex().upper() not in caplog.text


def test_run_command_reports_status_and_timeout() -> None:
    assert run_command("exit 0").returncode == 0
    r = run_command("echo oops >&2; exit 5")
    assert r.returncode == 5 and r.detail == "oops"
    slow = run_command("sleep 5", timeout=0.2)
    assert slow.returncode is None and "timed out" in slow.detail


def test_publish_ahead_rule_warnings(tmp_path: Path) -> None:
    policy = Policy(rotate_every=60, accept_for=600, publish_ahead=20)
    nginx = Target(TargetSpec("nginx", tmp_path / "n", reloads=("true",)))
    assert not publish_ahead_warnings(
        Policy(), 30, [Target(TargetSpec("nginx", tmp_path / "n", reloads=("true",)))])
    notes = publish_ahead_warnings(policy, 30, [nginx])
    assert any("re-reads the store every 30s" in n for n in notes)
    assert any("retried after up to 30s" in n for n in notes)
    nginx.last_reload_seconds = 15
    assert any("last reload took 15.0s" in n for n in publish_ahead_warnings(policy, 5, [nginx]))
    hap = Target(TargetSpec("haproxy", tmp_path / "h"))
    notes = publish_ahead_warnings(Policy(), 30, [hap])
    assert any("HAProxy holds 3 keys" in n for n in notes)
    assert any("no reload command or runtime API socket (--reload or --haproxy-socket)" in n
               for n in notes)


def test_cli_pairs_reload_with_the_export_before_it() -> None:
    specs = _ordered_targets([
        "--store", "file:x", "--export", "nginx:/a", "--reload", "nginx -s reload",
        "--export=haproxy:/b", "--haproxy-socket=/s", "--export", "apache:/c",
        "--reload", "apachectl graceful",
    ])
    assert [(s.format, str(s.path), s.reloads, s.haproxy_sockets) for s in specs] == [
        ("nginx", "/a", ("nginx -s reload",), ()),
        ("haproxy", "/b", (), (Path("/s"),)),
        ("apache", "/c", ("apachectl graceful",), ()),
    ]
    with pytest.raises(click.UsageError, match="must follow"):
        _ordered_targets(["--reload", "x", "--export", "nginx:/a"])
    with pytest.raises(click.UsageError, match="only applies to an haproxy"):
        _ordered_targets(["--export", "nginx:/a", "--haproxy-socket", "/s"])
    with pytest.raises(click.UsageError, match="unknown format"):
        _ordered_targets(["--export", "lighttpd:/a"])
    with pytest.raises(click.UsageError, match="the same --reload twice"):
        _ordered_targets(["--export", "nginx:/a", "--reload", "x", "--reload", "x"])
    with pytest.raises(click.UsageError, match="two --export targets write /a"):
        _ordered_targets(["--export", "nginx:/a", "--export", "envoy:/a"])
    with pytest.raises(ConfigError, match="targets nginx:/a and envoy:/a both write /a"):
        build_targets([TargetSpec("nginx", Path("/a")), TargetSpec("envoy", Path("/a"))])
