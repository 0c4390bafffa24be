"""stek.contrib.prometheus: a server's real handshakes, as Prometheus sees them.

In-process: N resumed reconnects show as N in stek_tickets_resumed_total,
a ticket under an unknown key as a rejection by reason, a store failure as
stek_server_store_ok 0.  Under a real gunicorn with 4 workers (multiprocess
mode), /metrics is the sum of every worker's counters; likewise under a real
uvicorn with 4 workers, ``track`` called from the app module and /metrics
routed to ``asgi_app``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.multiworker import RECONNECTS, WORKERS, resumers, spread_run
from helpers.ports import free_port
from helpers.processes import APPS, env_with, running, wait_https
from helpers.tls_peers import connect, reconnects, serving
from helpers.web_servers import live_store
from stek.contrib import prometheus as stek_prometheus
from stek.installation import Counters

N = 10


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(generate_latest(registry).decode())


@TLS_VERSIONS
def test_resumed_reconnects_are_counted(tmp_path: Path, certs: Certs,
                                        tls_version: ssl.TLSVersion) -> None:
    store, _ = live_store(tmp_path)
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    registry = CollectorRegistry()
    stek_prometheus.register(handle, registry=registry)
    with serving(ctx) as srv:
        seen = reconnects(srv.port, client_context(certs, tls_version), N)
    m = scrape(registry)
    handle.uninstall()
    assert seen == N
    assert m[("stek_tickets_resumed_total", ())] == N
    assert m[("stek_tickets_issued_total", ())] >= 1
    assert m[("stek_ticket_callback_errors_total", ())] == 0
    assert m[("stek_server_ring_generation", ())] == store.read().generation
    assert 0 <= m[("stek_server_snapshot_age_seconds", ())] < 60
    assert m[("stek_server_store_ok", ())] == 1


def test_every_counter_field_is_exposed(tmp_path: Path, certs: Certs) -> None:
    """Whatever fields Counters has, each one has a sample; rejections carry a reason."""
    store, _ = live_store(tmp_path)
    other, _ = live_store(tmp_path / "other")
    ctx, foreign = server_context(certs), server_context(certs)
    handle = stek.install(ctx, store)
    elsewhere = stek.install(foreign, other)
    registry = CollectorRegistry()
    stek_prometheus.register(handle, registry=registry)
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    with serving(foreign) as f, serving(ctx) as srv:
        unknown = connect(f.port, cctx).session
        assert not connect(srv.port, cctx, unknown).reused
    m = scrape(registry)
    handle.uninstall()
    elsewhere.uninstall()
    assert m[("stek_tickets_rejected_total", (("reason", "unknown"),))] == 1
    for field in dataclasses.fields(Counters):
        name, labels = stek_prometheus.metric_for(field.name)
        assert (f"{name}_total", tuple(sorted(labels.items()))) in m, field.name


def test_store_failure_shows(tmp_path: Path, certs: Certs) -> None:
    store, _ = live_store(tmp_path)
    handle = stek.install(server_context(certs), store)
    registry = CollectorRegistry()
    stek_prometheus.register(handle, registry=registry)
    Path(store.path).write_text("not a keyring")
    with pytest.raises(stek.StekError):
        handle.refresh()
    m = scrape(registry)
    handle.uninstall()
    assert m[("stek_server_store_ok", ())] == 0


# -- gunicorn, 4 workers, prometheus-client multiprocess mode ----------------------------

def fetch(port: int, cctx: ssl.SSLContext, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                    .encode())
        data = b""
        with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError):
            while chunk := tls.recv(65536):
                data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()


def _run_across_workers(port: int, cctx: ssl.SSLContext
                       ) -> tuple[int, dict[int, dict[str, int]]]:
    """A reconnect run in which every reconnect changes worker: the reconnects
    resumed, and each worker's latest counters."""
    run = spread_run(port, cctx)
    assert run.resumed >= RECONNECTS - 1, run.pids
    return run.resumed, run.counters


def _metrics_reaching(port: int, cctx: ssl.SSLContext, resumed: int
                      ) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], float]:
    """/metrics once its resumed total reaches ``resumed`` (or after 30 s), and that total.

    Workers write their counters to the multiprocess directory as they go;
    a scrape may come before the last worker's write.
    """
    deadline = time.monotonic() + 30
    while True:
        m = samples(fetch(port, cctx, "/metrics"))
        total = m.get(("stek_tickets_resumed_total", ()), 0)
        if total >= resumed or time.monotonic() > deadline:
            return m, total
        time.sleep(0.2)


@TLS_VERSIONS
def test_gunicorn_four_workers_sum(certs: Certs, tmp_path: Path,
                                   tls_version: ssl.TLSVersion) -> None:
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS),
           "--bind", f"127.0.0.1:{port}", "--certfile", str(certs.cert),
           "--keyfile", str(certs.key), "--chdir", str(APPS),
           "-c", str(APPS / "gunicorn_prometheus.conf.py"), "wsgi_metrics_app:app"]
    env = env_with(STEK_STORE=f"file:{tmp_path}/ring.json",
                   PROMETHEUS_MULTIPROC_DIR=str(mpdir))
    cctx = client_context(certs, tls_version)
    with running(cmd, tmp_path / "gunicorn.log", env=env) as proc:
        proc.wait_output(r"Booting worker with pid: (\d+)", WORKERS)
        wait_https(port, client_context(certs, ssl.TLSVersion.TLSv1_3), proc)
        resumed, counters = _run_across_workers(port, cctx)
        # Every worker's own view, then the sum that /metrics must show.
        m, total = _metrics_reaching(port, cctx, resumed)
        files = os.listdir(mpdir)
    print(f"gunicorn {tls_version.name}: {resumed} resumed; "
          f"per worker {[c['resumed'] for c in counters.values()]}; /metrics {total}")
    # No other client resumed anything: the sum over workers is what the client saw.
    assert total == resumed
    workers = resumers(counters)
    assert len(workers) >= 2, counters  # the sum spans several workers
    assert sum(c["resumed"] for c in counters.values()) <= total
    assert m[("stek_tickets_issued_total", ())] >= 1
    assert m[("stek_ticket_callback_errors_total", ())] == 0  # shown at 0, not absent
    assert m[("stek_server_store_ok", ())] == 1
    assert len([f for f in files if f.startswith("counter_")]) >= 2


@TLS_VERSIONS
def test_uvicorn_four_workers_sum(certs: Certs, tmp_path: Path,
                                  tls_version: ssl.TLSVersion) -> None:
    """uvicorn --workers 4 (spawned workers): each imports the app module, which calls
    track(stek.contrib.uvicorn.installation); /metrics (asgi_app) sums the workers."""
    mpdir = tmp_path / "prom"
    mpdir.mkdir()
    port = free_port()
    cmd = [sys.executable, str(APPS / "uvicorn_main.py"), str(port), str(certs.cert),
           str(certs.key), str(WORKERS), "stek", "asgi_metrics_app:app"]
    env = env_with(STEK_STORE=f"file:{tmp_path}/ring.json",
                   PROMETHEUS_MULTIPROC_DIR=str(mpdir))
    cctx = client_context(certs, tls_version)
    with running(cmd, tmp_path / "uvicorn.log", env=env) as proc:
        pids = proc.wait_output(r"Started server process \[(\d+)\]", WORKERS)
        wait_https(port, client_context(certs, ssl.TLSVersion.TLSv1_3), proc)
        resumed, counters = _run_across_workers(port, cctx)
        m, total = _metrics_reaching(port, cctx, resumed)
        files = os.listdir(mpdir)
    print(f"uvicorn {tls_version.name}: {resumed} resumed; "
          f"per worker {[c['resumed'] for c in counters.values()]}; /metrics {total}")
    assert len(set(pids)) == WORKERS
    # No other client resumed anything: the sum over workers is what the client saw.
    assert total == resumed
    workers = resumers(counters)
    assert len(workers) >= 2, counters  # the sum spans several workers
    assert set(workers) <= {int(p) for p in pids}
    assert m[("stek_tickets_issued_total", ())] >= 1
    assert m[("stek_ticket_callback_errors_total", ())] == 0
    assert m[("stek_server_store_ok", ())] == 1
    assert len([f for f in files if f.startswith("counter_")]) >= 2
