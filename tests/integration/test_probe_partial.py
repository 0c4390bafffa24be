"""``stek probe`` measures what answers: a dead or non-TLS endpoint is an error row.

One probe, three endpoints: a live stek Python server, a closed port and a
plain TCP listener that never speaks TLS.  The live one is measured as
usual, the other two are error rows with a diagnosis of kind
``unreachable`` each (the non-TLS one says "no TLS server answered"), the
probe exits 1 and its textfile says ``stek_probe_up{target}`` per endpoint.
Also: real nginx with its default ``ssl_session_timeout`` (300 s) on a ring
with the default 12 h window is a ``lifetime-hint-short``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import stek
from helpers.certs import Certs, server_context
from helpers.ports import free_port
from helpers.processes import stek_cli
from helpers.tls_peers import TLSServer
from helpers.web_servers import live_store, nginx
from stek.export import export
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores.file import FileStore

pytestmark = pytest.mark.servers

BOTH = ("1.2", "1.3")


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


@contextlib.contextmanager
def never_speaks_tls() -> Iterator[int]:
    """A plain TCP port: the kernel completes the connection (the listen backlog), and
    nothing ever reads or writes on it."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as srv:
        yield int(srv.getsockname()[1])


def test_one_dead_one_silent_one_live(tmp_path: Path, certs: Certs) -> None:
    store, _ = live_store(tmp_path)
    textfile = tmp_path / "probe.prom"
    dead = addr(free_port())  # nothing listens there
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    try:
        with TLSServer(ctx) as srv, never_speaks_tls() as plain_port:
            live, plain = addr(srv.port), addr(plain_port)
            proc = stek_cli("probe", live, dead, plain, "--json", "--timeout", "3s",
                            "--textfile", str(textfile), "--store", f"file:{store.path}")
    finally:
        handle.uninstall()
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    doc = json.loads(proc.stdout)
    for tls in BOTH:
        eps = {e["target"]: e for e in doc["endpoints"] if e["tls"] == tls}
        assert eps[live]["error"] is None and eps[live]["self_resume"] is True
        assert eps[live]["key_state"] == "active" and eps[live]["tickets"] >= 1
        assert eps[dead]["error_kind"] == eps[plain]["error_kind"] == "unreachable"
        assert eps[dead]["error"] == f"{dead} TLS {tls}: connection refused: nothing listens there"
        assert eps[plain]["error"] == (f"{plain} TLS {tls}: no TLS server answered "
                                       f"(nothing came back within 3s)")
        cells = {(c["from"], c["to"]): c for c in doc["matrix"] if c["tls"] == tls}
        assert len(cells) == 9
        assert cells[(live, live)]["resumed"] is True
        # Nothing is offered to, or from, an endpoint that could not be measured.
        assert not cells[(live, dead)]["offered"] and cells[(live, dead)]["error"]
        assert not cells[(dead, live)]["offered"] and not cells[(plain, live)]["offered"]
        unreachable = [d for d in doc["diagnoses"] if d["kind"] == "unreachable"
                       and d["tls"] == tls]
        assert sorted(d["targets"][0] for d in unreachable) == sorted([dead, plain])
    text = json.dumps(doc)
    assert "_ssl.c" not in text and "timed out" not in text

    families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    up = {s.labels["target"]: s.value for s in families["stek_probe_up"].samples}
    assert up == {live: 1.0, dead: 0.0, plain: 0.0}
    assert families["stek_probe_success"].samples[0].value == 0
    resumed = {(s.labels["from"], s.labels["to"], s.labels["tls"]): s.value
               for s in families["stek_probe_resumed"].samples}
    assert resumed[(live, live, "1.2")] == resumed[(live, live, "1.3")] == 1

    # The text output: an error row per version and the diagnosis.
    out = stek_cli("probe", dead, "--timeout", "1s")
    assert out.returncode == 1 and out.stderr == "", out.stderr
    assert f"{dead}  1.2  error: {dead} TLS 1.2: connection refused" in out.stdout, out.stdout
    assert f"- {dead} TLS 1.3: connection refused: nothing listens there" in out.stdout


def test_nginx_default_session_timeout_is_a_short_hint(tmp_path: Path, certs: Certs) -> None:
    """nginx keeps its default ssl_session_timeout (5 minutes) while the ring, with the
    default policy, accepts a key for 11 hours after it retires: lifetime-hint-short
    under both TLS versions (a warning: nginx still resumes, exit 0)."""
    store = FileStore(tmp_path / "ring.json")
    now = time.time()
    init_ring(store, Policy(), now=now)
    export("nginx", store.read(), now, tmp_path / "nginx-keys")
    # Only the key lines: the session timeout stays nginx's default whatever else an
    # export writes beside them.
    keys = tmp_path / "keys.conf"
    keys.write_text("".join(line + "\n" for line in
                            (tmp_path / "nginx-keys" / "tickets.conf").read_text().splitlines()
                            if line.startswith("ssl_session_ticket_key ")))
    # No ssl_session_timeout in the server block: nginx's default, 300s.
    with nginx(tmp_path, certs, keys) as server:
        port = server.port
        proc = stek_cli("probe", addr(port), "--json", "--store", f"file:{store.path}")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {e["lifetime_hint"] for e in doc["endpoints"]} == {300}
    assert all(e["self_resume"] and e["key_state"] == "active" for e in doc["endpoints"])
    short = [d for d in doc["diagnoses"] if d["kind"] == "lifetime-hint-short"]
    assert [(d["tls"], d["targets"]) for d in short] == [(tls, [addr(port)]) for tls in BOTH]
    assert "for only 5m" in short[0]["message"] and "accept_for (11h)" in short[0]["message"]
    assert "ssl_session_timeout" in short[0]["message"]
