"""Multi-worker Python servers (gunicorn, uvicorn, hypercorn, tornado): starting one,
the per-process hooks in-process, and the shared checks: with stek, reconnects
resume across workers; without it, a reconnect that changes worker never does
(the baseline, measured against the same server)."""

from __future__ import annotations

import contextlib
import ssl
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from helpers.certs import Certs, client_context
from helpers.ports import free_port
from helpers.processes import (
    APPS,
    Proc,
    ReconnectRun,
    env_with,
    reconnect_run,
    running,
    wait_https,
)
from stek.contrib import PerProcessContext

RECONNECTS = 40
WORKERS = 4


@contextlib.contextmanager
def workers_serving(cmd: Sequence[str], port: int, certs: Certs, log: Path, started: str, *,
                    env: dict[str, str], cwd: Path | None = None,
                    timeout: float = 30.0) -> Iterator[Proc]:
    """``cmd``, a server of ``WORKERS`` workers on 127.0.0.1:``port``, running: once its
    output matched ``started`` (a regex whose group tells the workers apart) for every
    worker and it answers HTTPS."""
    with running(cmd, log, env=env, cwd=cwd) as proc:
        proc.wait_output(started, WORKERS, timeout=timeout)
        wait_https(port, client_context(certs, ssl.TLSVersion.TLSv1_3), proc)
        yield proc


@contextlib.contextmanager
def app_workers(script: str, certs: Certs, workdir: Path, mode: str, started: str, *,
                env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout: float = 30.0) -> Iterator[tuple[int, Proc]]:
    """``tests/apps/script PORT CERT KEY WORKERS MODE`` (``mode``: stek or plain) under
    :func:`workers_serving`, on a file store in ``workdir`` unless ``env`` says
    otherwise; its port and process."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, str(APPS / script), str(port), str(certs.cert), str(certs.key),
           str(WORKERS), mode]
    env = env or env_with(STEK_STORE=f"file:{workdir}/ring.json")
    with workers_serving(cmd, port, certs, workdir / f"{Path(script).stem}.log", started,
                         env=env, cwd=cwd, timeout=timeout) as proc:
        yield port, proc


@contextlib.contextmanager
def fresh_hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
               module: ModuleType) -> Iterator[PerProcessContext]:
    """A fresh per-process cache behind the real hook of ``module`` (stek.contrib.gunicorn
    or stek.contrib.uvicorn), on a file store in ``tmp_path``; what it installed is
    uninstalled at the end."""
    monkeypatch.setenv("STEK_STORE", f"file:{tmp_path}/ring.json")
    fresh = PerProcessContext(module.__name__)
    monkeypatch.setattr(module, "_CONTEXT", fresh)
    try:
        yield fresh
    finally:
        inst = fresh.installation()
        if inst is not None:
            inst.uninstall()


def moved(run: ReconnectRun) -> list[bool]:
    return [r.reused for r, m in zip(run.replies, run.moves) if m]


def resumers(counters: dict[int, dict[str, int]]) -> list[int]:
    """The workers (pids) whose stek counters show a resumed ticket."""
    return [pid for pid, c in counters.items() if c["resumed"] > 0]


def spread_run(port: int, cctx: ssl.SSLContext) -> ReconnectRun:
    """``RECONNECTS`` reconnects, each to another worker than the one before it."""
    return reconnect_run(port, cctx, RECONNECTS, steer=True)


def assert_resumes_across_workers(run: ReconnectRun, label: str) -> None:
    cross = moved(run)
    print(f"{label}+stek: {run.resumed}/{RECONNECTS} resumed, {len(cross)} cross-worker, "
          f"workers {sorted(set(run.pids))}")
    assert run.resumed >= RECONNECTS - 1, run.pids
    assert len(cross) >= 2 and sum(cross) >= len(cross) - 1
    # The callback ran in several workers: they resumed tickets themselves.
    assert all(r.body["counters"] is not None for r in run.replies)
    assert len(resumers(run.counters)) >= 2, run.counters
    assert all(c["errors"] == 0 for c in run.counters.values())
    assert len({r.body["generation"] for r in run.replies}) == 1  # one shared ring


def assert_baseline(run: ReconnectRun, label: str) -> None:
    cross = moved(run)
    print(f"{label} plain: {run.resumed}/{RECONNECTS} resumed, {len(cross)} cross-worker, "
          f"workers {sorted(set(run.pids))}")
    assert all(r.body["counters"] is None for r in run.replies)  # stek was not there
    # The kernel decides which worker accepts; under load one may take them
    # all, so the baseline asks only that no reconnect resumed across workers.
    assert not any(cross)
    assert run.resumed < RECONNECTS - 1


def assert_stek_against_baseline(plain: ReconnectRun, with_stek: ReconnectRun, label: str) -> None:
    """The same server measured in the same test without stek, then with it."""
    assert_baseline(plain, label)
    assert_resumes_across_workers(with_stek, label)
    print(f"{label}: {with_stek.resumed}/{RECONNECTS} resumed with stek, "
          f"{plain.resumed}/{RECONNECTS} without")
    assert with_stek.resumed > plain.resumed
