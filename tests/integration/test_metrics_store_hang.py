"""/healthz and /metrics answer at once while the store hangs (a real Redis, SIGSTOPped).

A stopped Redis accepts connections and answers nothing: every command waits
for the client's timeouts.  The agent's pass and a store probe are then both
stuck on it; the metrics server must still answer from what it knows.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.store_servers import RedisServer
from stek import Policy, init_ring, open_store
from stek.agent import Agent, MetricsServer
from stek.stores.base import health_of

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

#: Seconds: generous against the < 100 ms the server answers in; the store's
#: own timeouts (seconds) are what an answer held behind a probe would take.
BOUND = 1.0


@pytest.fixture
def redis_server(redis_server: RedisServer) -> Iterator[RedisServer]:
    """tests/integration/conftest.py's, woken (SIGCONT) before it is stopped: a test
    leaves it SIGSTOPped."""
    yield redis_server
    if redis_server.proc is not None:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def get(port: int, path: str) -> tuple[int, bytes, float]:
    """Status, body and seconds taken."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            code, body = r.status, r.read()
    except urllib.error.HTTPError as exc:
        code, body = exc.code, exc.read()
    return code, body, time.monotonic() - t0


def test_healthz_and_metrics_answer_while_redis_is_stopped(
        redis_server: RedisServer, kek_file: Path) -> None:
    store = open_store(redis_server.url, kek_file=str(kek_file))
    init_ring(store, Policy(rotate_every=3600, accept_for=3600, publish_ahead=60))
    agent = Agent(store, policy=Policy(rotate_every=3600, accept_for=3600, publish_ahead=60))
    agent.step()
    server = MetricsServer(agent, "127.0.0.1", 0).start()
    try:
        code, body, _ = get(server.port, "/metrics")
        deadline = time.monotonic() + 10
        while b'stek_store_endpoint_up{endpoint="127.0.0.1:' not in body:
            assert time.monotonic() < deadline, body.decode()[-2000:]
            code, body, _ = get(server.port, "/metrics")
        assert code == 200 and get(server.port, "/healthz")[0] == 200

        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        # What a real outage has in flight: an agent pass and a store probe,
        # each waiting on the stopped server.
        stuck = [threading.Thread(target=agent.step, daemon=True),
                 threading.Thread(target=health_of, args=(store,), daemon=True)]
        for t in stuck:
            t.start()
        with ThreadPoolExecutor(8) as pool:
            metrics = [pool.submit(get, server.port, "/metrics") for _ in range(4)]
            healthz = [pool.submit(get, server.port, "/healthz") for _ in range(20)]
            answers = [f.result() for f in healthz + metrics]
        assert all(t.is_alive() for t in stuck)  # the store still hangs: nothing was answered by it
        took = sorted(a[2] for a in answers)
        print(f"answers while the store hangs: p50 {took[len(took) // 2] * 1000:.1f} ms, "
              f"max {took[-1] * 1000:.1f} ms")
        assert took[-1] < BOUND, took
        assert {a[0] for a in answers[:20]} <= {200, 503}
        assert all(a[0] == 200 and b"stek_store_endpoint_up" in a[1] for a in answers[20:])
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT) if redis_server.proc else None
        server.close()
        store.close()
