"""tornado with fork_processes(4): stek installed in each worker (the recipe of
docs/integrations.md) resumes across workers; tornado's own multi-process
pattern (ssl_options as a dict, a context per worker) does not.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def tornado(certs: Certs, tmp_path: Path, mode: str) -> Iterator[tuple[int, Proc]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [sys.executable, str(APPS / "tornado_server.py"), str(port), str(certs.cert),
           str(certs.key), str(WORKERS), mode]
    env = env_with(STEK_STORE=f"file:{tmp_path}/ring.json")
    with workers_serving(cmd, port, certs, tmp_path / "tornado.log", r"worker (\d+) ready",
                         env=env, timeout=60) as proc:
        yield port, proc


@TLS_VERSIONS
def test_tornado_fork_processes_resume_where_plain_tornado_does_not(
        certs: Certs, tmp_path: Path, tls_version: ssl.TLSVersion) -> None:
    """4 workers, 40 reconnects: without stek first (the baseline), then with it."""
    cctx = client_context(certs, tls_version)
    with tornado(certs, tmp_path / "plain", "plain") as (port, _):
        plain = spread_run(port, cctx)
    with tornado(certs, tmp_path / "stek", "stek") as (port, _):
        with_stek = spread_run(port, cctx)
    assert_stek_against_baseline(plain, with_stek, f"tornado {tls_version.name}")
