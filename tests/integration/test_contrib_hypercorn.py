"""stek.contrib.hypercorn: 4 real hypercorn workers resume each other's tickets.

Without it each spawned worker builds its own context, with its own random
ticket key: a reconnect that lands on another worker never resumes.
"""

from __future__ import annotations

import contextlib
import pickle
import ssl
from pathlib import Path

from helpers.certs import TLS_VERSIONS, Certs, client_context
from helpers.multiworker import app_workers, assert_stek_against_baseline, spread_run
from helpers.processes import APPS, Proc
from stek.contrib import hypercorn as stek_hypercorn


def hypercorn(certs: Certs, workdir: Path,
              mode: str) -> contextlib.AbstractContextManager[tuple[int, Proc]]:
    """hypercorn_main.py: spawned workers, each loading hypercorn_app from tests/apps."""
    return app_workers("hypercorn_main.py", certs, workdir, mode, r"worker (\d+) loaded",
                       cwd=APPS, timeout=60)


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
