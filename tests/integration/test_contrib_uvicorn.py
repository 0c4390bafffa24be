"""stek.contrib.uvicorn: ssl_context_factory, through uvicorn's Config and a real uvicorn.

The problem it solves, measured here against the same uvicorn: each worker
has its own random ticket key, so a reconnect resumes only when it happens
to land on the worker that issued its ticket.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context
from helpers.multiworker import (
    RECONNECTS,
    WORKERS,
    app_workers,
    assert_baseline,
    assert_resumes_across_workers,
    fresh_hook,
    spread_run,
)
from helpers.processes import (
    Proc,
    env_with,
    https_get,
    reconnect_run,
    wait_every_worker_on,
)
from stek.contrib import PerProcessContext
from stek.contrib import uvicorn as stek_uvicorn


@pytest.fixture
def factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[PerProcessContext]:
    with fresh_hook(monkeypatch, tmp_path, stek_uvicorn) as fresh:
        yield fresh


async def _app(scope, receive, send) -> None:  # pragma: no cover - never served
    pass


def test_config_load_installs_stek(factory: PerProcessContext, certs: Certs,
                                   tmp_path: Path) -> None:
    """uvicorn's Config.load() calls the factory; the context it keeps has stek installed."""
    config = uvicorn.Config(_app, ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key),
                            ssl_context_factory=stek_uvicorn.ssl_context_factory)
    config.load()
    assert isinstance(config.ssl, ssl.SSLContext)
    inst = stek_uvicorn.installation()
    assert inst is not None and inst.installed
    assert inst.store.url == f"file:{tmp_path}/ring.json"
    assert len(inst.ring) >= 1  # created by rotate=True
    # A second Config in the same process gets the same context: no second install.
    again = uvicorn.Config(_app, ssl_certfile=str(certs.cert), ssl_keyfile=str(certs.key),
                           ssl_context_factory=stek_uvicorn.ssl_context_factory)
    again.load()
    assert again.ssl is config.ssl
    assert stek_uvicorn.installation() is inst


def test_factory_pickles_by_reference() -> None:
    """workers > 1 pickles the Config into spawned workers: the factory must survive that."""
    import pickle

    assert pickle.loads(pickle.dumps(stek_uvicorn.ssl_context_factory)) \
        is stek_uvicorn.ssl_context_factory


def uvicorn_server(certs: Certs, tmp_path: Path, *, with_stek: bool,
                   env: dict[str, str] | None = None
                   ) -> contextlib.AbstractContextManager[tuple[int, Proc]]:
    """uvicorn_main.py: spawned workers, with stek's ssl_context_factory or without."""
    return app_workers("uvicorn_main.py", certs, tmp_path, "stek" if with_stek else "plain",
                       r"Started server process \[(\d+)\]", env=env)


@TLS_VERSIONS
def test_uvicorn_workers_resume(certs: Certs, tmp_path: Path,
                                tls_version: ssl.TLSVersion) -> None:
    """4 workers with the factory: >= 39 of 40 reconnects resume, each on another
    worker than the one before it."""
    cctx = client_context(certs, tls_version)
    with uvicorn_server(certs, tmp_path, with_stek=True) as (port, _proc):
        run = spread_run(port, cctx)
    assert_resumes_across_workers(run, f"uvicorn {tls_version.name}")
    assert sum(c["issued"] for c in run.counters.values()) > 0


@TLS_VERSIONS
def test_uvicorn_without_stek_resumes_only_on_the_same_worker(
        certs: Certs, tmp_path: Path, tls_version: ssl.TLSVersion) -> None:
    """The baseline: same uvicorn, plain certfile: a reconnect to another worker never resumes."""
    cctx = client_context(certs, tls_version)
    with uvicorn_server(certs, tmp_path, with_stek=False) as (port, _proc):
        run = spread_run(port, cctx)
    assert_baseline(run, f"uvicorn {tls_version.name}")


def test_uvicorn_with_dead_redis_serves_then_picks_up_the_ring(
        certs: Certs, tmp_path: Path, kek_file: Path) -> None:
    """A Redis port with nothing listening: the workers start and serve TLS (no crash loop).

    Then redis-server starts on that port with a sealed ring: the workers
    read it without a restart and resume tickets across workers.
    """
    from helpers.store_servers import RedisServer

    redis = RedisServer(tmp_path / "redis")
    env = env_with(STEK_STORE=redis.url, STEK_KEK_FILE=str(kek_file))
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    with uvicorn_server(certs, tmp_path, with_stek=True, env=env) as (port, proc):
        before = [https_get(port, cctx) for _ in range(8)]
        assert all(r.body["generation"] == 0 and r.body["counters"]["issued"] == 0
                   for r in before)
        pids = set(proc.wait_output(r"Started server process \[(\d+)\]", WORKERS))
        with redis:
            store = stek.open_store(redis.url, kek_file=str(kek_file))
            ring = stek.rotate(store, create=stek.Policy()).ring
            wait_every_worker_on(port, cctx, ring.generation, WORKERS)
            run = reconnect_run(port, cctx, RECONNECTS)
            log = proc.output()
    moved = [r for r, m in zip(run.replies, run.moves) if m]
    assert run.resumed >= RECONNECTS - 1, run.pids
    assert len(moved) >= 1 and all(r.reused for r in moved)
    assert {r.body["generation"] for r in run.replies} == {ring.generation}
    # No worker died and came back: the same processes served throughout.
    assert set(re.findall(r"Started server process \[(\d+)\]", log)) == pids
    assert "Traceback" not in log
    assert 1 <= len(re.findall(r"unreadable at start", log)) <= WORKERS, log
