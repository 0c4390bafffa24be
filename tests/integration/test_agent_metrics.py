"""The agent's /metrics and /healthz: in process with a pinned clock, and the real CLI."""

from __future__ import annotations

import contextlib
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.certs import Certs, client_context
from helpers.ports import free_port
from helpers.web_servers import get, nginx
from stek.agent import Agent, MetricsServer, Target, TargetSpec
from stek.export import export
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import FileStore

SLOT = 600
T0 = (1_900_000_000 // SLOT) * SLOT + 1


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_reflect_a_rotation_and_a_failed_reload(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "ring.json")
    first = init_ring(store, Policy(rotate_every=SLOT, accept_for=5 * SLOT, publish_ahead=60),
                      now=T0).ring
    clock = [float(T0)]
    flag = tmp_path / "reload-ok"
    target = Target(TargetSpec("nginx", tmp_path / "nginx", reloads=(f"test -e {flag}",)))
    agent = Agent(store, clock=lambda: clock[0], targets=[target])
    server = MetricsServer(agent, "127.0.0.1", 0).start()
    labels = (("format", "nginx"), ("target", target.name))
    try:
        agent.step()
        m = scrape(server.port)
        assert m[("stek_ring_generation", ())] == first.generation
        assert m[("stek_rotations_total", ())] == 0  # the ring existed already
        assert m[("stek_keys", (("state", "active"),))] == 1
        assert m[("stek_active_key_age_seconds", ())] == 0
        retires = min(k.retires_at for k in store.read().keys)
        assert m[("stek_next_rotation_timestamp_seconds", ())] == retires - 60
        # The first export's reload failed: counted, pending, and unhealthy.
        assert m[("stek_target_reload_failures_total", labels)] == 1
        assert m[("stek_target_reload_pending", labels)] == 1
        assert ("stek_target_last_reload_success_timestamp_seconds", labels) not in m
        assert m[("stek_target_last_export_success_timestamp_seconds", labels)] == T0
        code, text = healthz(server.port)
        assert code == 503 and target.name in text and "reload" in text

        clock[0] = retires - 30  # rotation: a key is added (published ahead)
        flag.touch()
        agent.step()
        m = scrape(server.port)
        assert m[("stek_rotations_total", ())] == 1
        assert m[("stek_ring_generation", ())] == first.generation + 1
        assert m[("stek_keys", (("state", "pending"),))] == 1
        assert m[("stek_active_key_age_seconds", ())] == retires - 30 - T0
        assert m[("stek_target_reload_failures_total", labels)] == 1  # kept, not reset
        assert m[("stek_target_reloads_total", labels)] == 1
        assert m[("stek_target_reload_pending", labels)] == 0
        assert m[("stek_target_last_reload_success_timestamp_seconds", labels)] == clock[0]
        assert healthz(server.port) == (200, "ok\n")
        for k in store.read().keys:  # names are public; key bytes never appear
            assert ("stek_key_age_seconds", (("name", k.name.hex()), ("state", "active"))) \
                in m or k.activates_at > clock[0]
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read()
        for k in store.read().keys:
            assert k.aes_key.hex().encode() not in text
            assert k.hmac_key.hex().encode() not in text
    finally:
        server.close()


@pytest.mark.servers
def test_cli_agent_with_real_nginx_metrics_and_clean_stop(tmp_path: Path, certs: Certs) -> None:
    """``stek agent`` as operators run it: real time, a short policy, a real nginx."""
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy(rotate_every=3, accept_for=20, publish_ahead=2))
    out = tmp_path / "nginx-keys"
    export("nginx", store.read(), time.time(), out)
    port = free_port()
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx:
        agent = subprocess.Popen(
            [sys.executable, "-m", "stek.cli", "agent", "--store", f"file:{store.path}",
             "--export", f"nginx:{out}", "--reload", f"kill -HUP {ngx.pid}",
             "--export", f"haproxy:{tmp_path / 'hap.keys'}", "--reload", "exit 3",
             "--metrics-addr", f"127.0.0.1:{port}", "--interval", "1s"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ngx_labels = (("format", "nginx"), ("target", f"nginx:{out}"))
        hap_labels = (("format", "haproxy"), ("target", f"haproxy:{tmp_path / 'hap.keys'}"))
        try:
            deadline = time.monotonic() + 60
            while True:  # at least two rotations: two reloads of each target
                with contextlib.suppress(OSError):
                    m = scrape(port)
                    if (m.get(("stek_rotations_total", ()), 0) >= 1
                            and m.get(("stek_target_reloads_total", ngx_labels), 0) >= 2
                            and m.get(("stek_target_reload_failures_total", hap_labels), 0) >= 2):
                        break
                assert time.monotonic() < deadline, "the agent never rotated twice"
                time.sleep(0.2)
            code, health = healthz(port)
            enc = store.read().encrypting_key(time.time())
            assert enc is not None
            deadline = time.monotonic() + 10
            while get(ngx.port, cctx).name != enc.name:  # nginx follows the ring
                assert time.monotonic() < deadline
                time.sleep(0.1)
                enc = store.read().encrypting_key(time.time())
                assert enc is not None
        finally:
            agent.send_signal(signal.SIGTERM)
            output, _ = agent.communicate(timeout=20)
    assert agent.returncode == 0, output
    assert "stek agent stopped" in output
    assert m[("stek_rotations_total", ())] >= 1
    assert m[("stek_target_reloads_total", ngx_labels)] >= 2
    assert m[("stek_target_reload_failures_total", ngx_labels)] == 0
    assert m[("stek_target_reload_failures_total", hap_labels)] >= 2
    assert m[("stek_target_reload_pending", hap_labels)] == 1
    assert code == 503 and "exited 3" in health
    assert "publish_ahead" in output  # --interval 1s vs. publish_ahead 2s is fine, but the
    # default retry (30s) and reload timeout (60s) break the 2s rule, and are reported.
    for k in store.read().keys:
        assert k.aes_key.hex() not in output and k.hmac_key.hex() not in output
