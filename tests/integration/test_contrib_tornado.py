"""tornado with fork_processes(4): stek installed in each worker (the recipe of
docs/integrations.md) resumes across workers; tornado's own multi-process
pattern (ssl_options as a dict, a context per worker) does not.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from helpers.certs import TLS_VERSIONS, Certs, client_context
from helpers.multiworker import app_workers, assert_stek_against_baseline, spread_run
from helpers.processes import Proc


def tornado(certs: Certs, workdir: Path,
            mode: str) -> contextlib.AbstractContextManager[tuple[int, Proc]]:
    """tornado_server.py: fork_processes, then (with stek) an install in each worker."""
    return app_workers("tornado_server.py", certs, workdir, mode, r"worker (\d+) ready",
                       timeout=60)


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
