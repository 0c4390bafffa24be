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

from conftest import TLS_VERSIONS, Certs, client_context, free_port
from multiworker import RECONNECTS, WORKERS, assert_baseline, assert_resumes_across_workers
from procs import APPS, Proc, env_with, reconnect_run, running, wait_https
from stek.contrib import hypercorn as stek_hypercorn


@contextlib.contextmanager
def hypercorn(certs: Certs, tmp_path: Path, mode: str) -> Iterator[tuple[int, Proc]]:
    port = free_port()
    cmd = [sys.executable, str(APPS / "hypercorn_main.py"), str(port), str(certs.cert),
           str(certs.key), str(WORKERS), mode]
    env = env_with(STEK_STORE=f"file:{tmp_path}/ring.json")
    with running(cmd, tmp_path / "hypercorn.log", env=env, cwd=APPS) as proc:
        proc.wait_output(r"worker (\d+) loaded", WORKERS, timeout=60)
        wait_https(port, client_context(certs, ssl.TLSVersion.TLSv1_3), proc)
        yield port, proc


def test_config_pickles_into_spawned_workers() -> None:
    config = stek_hypercorn.Config()
    again = pickle.loads(pickle.dumps(config))
    assert type(again) is stek_hypercorn.Config


@TLS_VERSIONS
def test_hypercorn_workers_resume(certs: Certs, tmp_path: Path,
                                  tls_version: ssl.TLSVersion) -> None:
    cctx = client_context(certs, tls_version)
    with hypercorn(certs, tmp_path, "stek") as (port, _):
        run = reconnect_run(port, cctx, RECONNECTS)
    assert_resumes_across_workers(run, f"hypercorn {tls_version.name}")


@TLS_VERSIONS
def test_hypercorn_without_stek(certs: Certs, tmp_path: Path,
                                tls_version: ssl.TLSVersion) -> None:
    cctx = client_context(certs, tls_version)
    with hypercorn(certs, tmp_path, "plain") as (port, _):
        run = reconnect_run(port, cctx, RECONNECTS)
    assert_baseline(run, f"hypercorn {tls_version.name}")
