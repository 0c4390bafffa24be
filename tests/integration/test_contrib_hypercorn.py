"""stek.contrib.hypercorn: 4 real hypercorn workers resume each other's tickets.

Without it each spawned worker builds its own context, with its own random
ticket key: a reconnect that lands on another worker never resumes.
"""

from __future__ import annotations

import contextlib
import pickle
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers.certs import TLS_VERSIONS, Certs, client_context
from helpers.multiworker import (
    WORKERS,
    assert_stek_against_baseline,
    spread_run,
    workers_serving,
)
from helpers.ports import free_port
from helpers.processes import APPS, Proc, env_with
from stek.contrib import hypercorn as stek_hypercorn


@contextlib.contextmanager
def hypercorn(certs: Certs, tmp_path: Path, mode: str) -> Iterator[tuple[int, Proc]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, str(APPS / "hypercorn_main.py"), str(port), str(certs.cert),
           str(certs.key), str(WORKERS), mode]
    env = env_with(STEK_STORE=f"file:{tmp_path}/ring.json")
    with workers_serving(cmd, port, certs, tmp_path / "hypercorn.log", r"worker (\d+) loaded",
                         env=env, cwd=APPS, timeout=60) as proc:
        yield port, proc


def test_config_pickles_into_spawned_workers() -> None:
    config = stek_hypercorn.Config()
    again = pickle.loads(pickle.dumps(config))
    assert type(again) is stek_hypercorn.Config


@TLS_VERSIONS
def test_hypercorn_workers_resume_where_plain_hypercorn_does_not(
        certs: Certs, tmp_path: Path, tls_version: ssl.TLSVersion) -> None:
    """4 workers, 40 reconnects: without stek first (the baseline), then with it."""
    cctx = client_context(certs, tls_version)
    with hypercorn(certs, tmp_path / "plain", "plain") as (port, _):
        plain = spread_run(port, cctx)
    with hypercorn(certs, tmp_path / "stek", "stek") as (port, _):
        with_stek = spread_run(port, cctx)
    assert_stek_against_baseline(plain, with_stek, f"hypercorn {tls_version.name}")
