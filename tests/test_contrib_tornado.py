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

from conftest import TLS_VERSIONS, Certs, client_context, free_port
from multiworker import RECONNECTS, WORKERS, assert_baseline, assert_resumes_across_workers
from procs import APPS, Proc, env_with, reconnect_run, running, wait_https


@contextlib.contextmanager
def tornado(certs: Certs, tmp_path: Path, mode: str) -> Iterator[tuple[int, Proc]]:
    port = free_port()
    cmd = [sys.executable, str(APPS / "tornado_server.py"), str(port), str(certs.cert),
           str(certs.key), str(WORKERS), mode]
    env = env_with(STEK_STORE=f"file:{tmp_path}/ring.json")
    with running(cmd, tmp_path / "tornado.log", env=env) as proc:
        proc.wait_output(r"worker (\d+) ready", WORKERS, timeout=60)
        wait_https(port, client_context(certs, ssl.TLSVersion.TLSv1_3), proc)
        yield port, proc


@TLS_VERSIONS
def test_tornado_fork_processes_resume(certs: Certs, tmp_path: Path,
                                       tls_version: ssl.TLSVersion) -> None:
    cctx = client_context(certs, tls_version)
    with tornado(certs, tmp_path, "stek") as (port, _):
        run = reconnect_run(port, cctx, RECONNECTS)
    assert_resumes_across_workers(run, f"tornado {tls_version.name}")


@TLS_VERSIONS
def test_tornado_without_stek(certs: Certs, tmp_path: Path,
                              tls_version: ssl.TLSVersion) -> None:
    cctx = client_context(certs, tls_version)
    with tornado(certs, tmp_path, "plain") as (port, _):
        run = reconnect_run(port, cctx, RECONNECTS)
    assert_baseline(run, f"tornado {tls_version.name}")
