"""``stek probe`` against real fleets: nginx, HAProxy and Python servers.

Each fleet has two endpoints fed by one stek ring and a third with a key of
its own.  The real command line (a separate process) must show exactly the
pairs that resume, name the odd one out, and exit 1; the two that share
exit 0.  Also: a lifetime hint longer than the ring accepts, a key older than
rotate_every + accept_for, an endpoint with no tickets, same key but another
session id context, --watch, the JSON and textfile outputs, and hostile or
absent servers (an error row each, exit 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import stek
from helpers.certs import Certs, server_context
from helpers.ports import free_port
from helpers.processes import stek_cli
from helpers.programs import find_program
from helpers.tls_peers import TLSServer
from helpers.web_servers import Server, haproxy, live_store, nginx
from stek.export import export
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores.file import FileStore

pytestmark = pytest.mark.servers

BOTH = ("1.2", "1.3")


def probe(*args: str) -> tuple[int, dict, str]:
    proc = stek_cli("probe", *args, "--json", "--timeout", "5s")
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, doc, proc.stderr


def resumed_pairs(doc: dict, tls: str) -> set[tuple[str, str]]:
    return {(c["from"], c["to"]) for c in doc["matrix"] if c["tls"] == tls and c["resumed"]}


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


def expect_two_plus_odd(doc: dict, a: str, b: str, odd: str) -> None:
    """Exactly the pairs among a, b and the odd one's own ticket resume; it is named."""
    for tls in BOTH:
        assert resumed_pairs(doc, tls) == {(a, a), (a, b), (b, a), (b, b), (odd, odd)}, tls
        assert len([c for c in doc["matrix"] if c["tls"] == tls]) == 9
        diff = [d for d in doc["diagnoses"] if d["kind"] == "different-keys" and d["tls"] == tls]
        assert len(diff) == 1 and diff[0]["targets"] == [odd], doc["diagnoses"]
        assert f"{odd} is the odd one out" in diff[0]["message"]
        eps = {e["target"]: e for e in doc["endpoints"] if e["tls"] == tls}
        assert eps[a]["key_name"] == eps[b]["key_name"] != eps[odd]["key_name"]
        assert all(e["self_resume"] and e["tickets"] >= 1 for e in eps.values())
        assert eps[a]["key_state"] == "active" and eps[odd]["key_state"] == "not in the ring"
        assert any(d["kind"] == "not-in-ring" and d["targets"] == [odd]
                   for d in doc["diagnoses"] if d["tls"] == tls)


def other_ring(tmp_path: Path, label: str, now: float) -> FileStore:
    """A second ring, made at ``now``, the instant the test exports both rings at.

    Made at the clock instead, its first key activates at the next whole
    second when ``now`` was read just before it: not yet active at ``now``.
    """
    store = FileStore(tmp_path / f"{label}-ring.json")
    init_ring(store, Policy(rotate_every=3600, accept_for=3600, publish_ahead=60), now=now)
    return store


def test_nginx_fleet(tmp_path: Path, certs: Certs) -> None:
    store, now = live_store(tmp_path)
    shared, own = tmp_path / "shared", tmp_path / "own"
    export("nginx", store.read(), now, shared)
    export("nginx", other_ring(tmp_path, "own", now).read(), now, own)
    with nginx(tmp_path, certs, shared / "tickets.conf", "a") as a, \
            nginx(tmp_path, certs, shared / "tickets.conf", "b") as b, \
            nginx(tmp_path, certs, own / "tickets.conf", "c") as c:
        code, doc, err = probe(addr(a.port), addr(b.port), addr(c.port),
                               "--store", f"file:{store.path}")
        assert code == 1, err
        expect_two_plus_odd(doc, addr(a.port), addr(b.port), addr(c.port))
        # nginx announces TLS 1.3 tickets too (OpenSSL's default: 2 per handshake).
        assert all(e["tickets"] >= 1 for e in doc["endpoints"] if e["tls"] == "1.3")
        # ssl_session_timeout 1h is within what the ring accepts: no lifetime warning.
        assert not [d for d in doc["diagnoses"] if d["kind"] == "lifetime-hint"]
        assert {e["lifetime_hint"] for e in doc["endpoints"]} == {3600}
        code, doc, err = probe(addr(a.port), addr(b.port))
        assert code == 0, (err, doc)
        assert doc["all_resume"] and doc["diagnoses"] == []


def test_haproxy_fleet(tmp_path: Path, certs: Certs) -> None:
    store, now = live_store(tmp_path)
    shared, own = tmp_path / "shared.keys", tmp_path / "own.keys"
    export("haproxy", store.read(), now, shared)
    export("haproxy", other_ring(tmp_path, "own", now).read(), now, own)
    with haproxy(tmp_path, certs, shared, "a") as a, haproxy(tmp_path, certs, shared, "b") as b, \
            haproxy(tmp_path, certs, own, "c") as c:
        code, doc, err = probe(addr(a.port), addr(b.port), addr(c.port),
                               "--store", f"file:{store.path}")
        assert code == 1, err
        expect_two_plus_odd(doc, addr(a.port), addr(b.port), addr(c.port))
        code, doc, err = probe(addr(a.port), addr(b.port))
        assert code == 0, (err, doc)


@contextlib.contextmanager
def python_servers(certs: Certs, *stores: FileStore | None) -> Iterator[list[int]]:
    """In-process TLS servers: stek installed on each store, or Python's own key (None)."""
    with contextlib.ExitStack() as stack:
        ports, handles = [], []
        for store in stores:
            ctx = server_context(certs)
            if store is not None:
                handles.append(stek.install(ctx, store))
            ports.append(stack.enter_context(TLSServer(ctx)).port)
        yield ports
        for h in handles:
            h.uninstall()


def test_python_fleet(tmp_path: Path, certs: Certs) -> None:
    """Two Python servers on one ring and one with Python's own random key."""
    store, _ = live_store(tmp_path)
    with python_servers(certs, store, store, None) as (a, b, c):
        code, doc, err = probe(addr(a), addr(b), addr(c), "--store", f"file:{store.path}")
        assert code == 1, err
        expect_two_plus_odd(doc, addr(a), addr(b), addr(c))
        # stek sets the hint to accept_for, never longer than the ring accepts.
        eps = {e["target"]: e for e in doc["endpoints"]}
        assert eps[addr(a)]["lifetime_hint"] == store.read().policy.accept_for
        assert not [d for d in doc["diagnoses"]
                    if d["kind"] == "lifetime-hint" and addr(c) not in d["targets"]]
        code, doc, err = probe(addr(a), addr(b))
        assert code == 0, (err, doc)
        # An IP target is verified against the certificate's IP address.
        code, doc, err = probe(addr(a), addr(b), "--cafile", str(certs.ca))
        assert code == 0, (err, doc)


def test_same_key_other_session_id_context(tmp_path: Path, certs: Certs) -> None:
    """nginx and a Python server on one ring: same key name, no resumption; with the
    ring the probe opens both tickets and names the differing session id contexts."""
    store, now = live_store(tmp_path)
    out = tmp_path / "nginx-keys"
    export("nginx", store.read(), now, out)
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx, \
            python_servers(certs, store) as (py,):
        code, doc, _ = probe(addr(ngx.port), addr(py), "--tls", "1.2",
                             "--store", f"file:{store.path}")
        assert code == 1
        assert resumed_pairs(doc, "1.2") == {(addr(ngx.port), addr(ngx.port)),
                                             (addr(py), addr(py))}
        eps = {e["target"]: e for e in doc["endpoints"]}
        # stek hashes the Python server's trust configuration into its context.
        assert eps[addr(py)]["sid_ctx"] is not None
        assert eps[addr(ngx.port)]["sid_ctx"] not in (None, eps[addr(py)]["sid_ctx"])
        same = [d for d in doc["diagnoses"] if d["kind"] == "no-resumption"]
        assert len(same) == 2 and all("session id contexts differ" in d["message"]
                                      for d in same)
        assert not [d for d in doc["diagnoses"] if d["kind"] == "different-keys"]
        # Without the ring the context is sealed away: the probe says so.
        code, doc, _ = probe(addr(ngx.port), addr(py), "--tls", "1.2")
        assert code == 1
        assert any("give --store" in d["message"] for d in doc["diagnoses"])


def test_lifetime_hint_longer_than_the_ring_accepts(tmp_path: Path, certs: Certs) -> None:
    """nginx's 1h session timeout on a ring that accepts a key for at most 20 minutes."""
    store = FileStore(tmp_path / "short.json")
    now = time.time()
    init_ring(store, Policy(rotate_every=600, accept_for=600, publish_ahead=60), now=now)
    out = tmp_path / "nginx-keys"
    export("nginx", store.read(), now, out)
    # stek's tickets.conf sets the ring's accept_for: this nginx was given its own 1h.
    own = tmp_path / "own-timeout.conf"
    own.write_text("".join(line for line in (out / "tickets.conf").read_text().splitlines(True)
                           if not line.startswith("ssl_session_timeout")) +
                   "ssl_session_timeout 1h;\n")
    with nginx(tmp_path, certs, own) as ngx:
        code, doc, _ = probe(addr(ngx.port), "--store", f"file:{store.path}")
    assert code == 0  # it resumes; the hint is a warning
    hints = [d for d in doc["diagnoses"] if d["kind"] == "lifetime-hint"]
    assert {d["tls"] for d in hints} == set(BOTH)
    assert "promises tickets for 1h" in hints[0]["message"]


def test_key_older_than_the_window(tmp_path: Path, certs: Certs) -> None:
    """A server still sealing under a key activated longer than rotate_every + accept_for
    ago: its files were never updated."""
    store = FileStore(tmp_path / "ring.json")
    past = time.time() - 3 * 1200
    init_ring(store, Policy(rotate_every=600, accept_for=600, publish_ahead=60), now=past)
    out = tmp_path / "nginx-keys"
    export("nginx", store.read(), past, out)
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx:
        code, doc, _ = probe(addr(ngx.port), "--tls", "1.3", "--store", f"file:{store.path}")
    stale = [d for d in doc["diagnoses"] if d["kind"] == "stale-key"]
    assert len(stale) == 1 and "not getting new keys" in stale[0]["message"], doc
    assert doc["endpoints"][0]["key_state"] == "expired"
    assert code == 0  # nginx itself still resumes it


def test_no_tickets(tmp_path: Path, certs: Certs) -> None:
    ctx = server_context(certs)
    ctx.options |= ssl.OP_NO_TICKET
    with TLSServer(ctx) as srv:
        code, doc, _ = probe(addr(srv.port), "--tls", "1.2")
    assert code == 1
    assert doc["endpoints"][0]["tickets"] == 0 and doc["endpoints"][0]["key_name"] is None
    assert [d["kind"] for d in doc["diagnoses"]] == ["no-tickets"]
    assert doc["matrix"] == [{"from": addr(srv.port), "to": addr(srv.port), "tls": "1.2",
                              "resumed": False, "offered": False, "error": None}]


def test_ring_looked_up_only_with_store_option(tmp_path: Path, certs: Certs) -> None:
    """$STEK_STORE in the environment does not switch the ring lookup on; --store does,
    and --help says so (no default store)."""
    store, _ = live_store(tmp_path)
    env = {**os.environ, "STEK_STORE": f"file:{store.path}"}
    with python_servers(certs, store) as (a,):
        proc = stek_cli("probe", addr(a), "--tls", "1.3", "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["store"] is None and doc["endpoints"][0]["key_state"] is None
        code, doc, err = probe(addr(a), "--tls", "1.3", "--store", f"file:{store.path}")
        assert code == 0, err
        assert doc["endpoints"][0]["key_state"] == "active"
    text = " ".join(stek_cli("probe", "--help", env=env).stdout.split())
    assert "Without --store no store is used: no default" in text, text
    assert "env STEK_STORE" not in text and "default file:" not in text, text


def test_text_textfile_and_watch(tmp_path: Path, certs: Certs) -> None:
    store, _ = live_store(tmp_path)
    textfile = tmp_path / "stek_probe.prom"
    with python_servers(certs, store, None) as (a, b):
        proc = stek_cli("probe", addr(a), addr(b), "--store", f"file:{store.path}",
                        "--textfile", str(textfile))
        assert proc.returncode == 1, proc.stderr
        assert "is the odd one out" in proc.stdout and "not in the ring" in proc.stdout
        families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
        assert list(tmp_path.glob("stek_probe.prom.*")) == []  # no temp file left
        ok = families["stek_probe_success"].samples[0].value
        assert ok == 1 and families["stek_probe_all_resume"].samples[0].value == 0
        resumed = {(s.labels["from"], s.labels["to"], s.labels["tls"]): s.value
                   for s in families["stek_probe_resumed"].samples}
        assert resumed[(addr(a), addr(a), "1.3")] == 1 and resumed[(addr(a), addr(b), "1.2")] == 0
        info = families["stek_probe_key_info"].samples
        assert {s.labels["key_state"] for s in info} == {"active", "not in the ring"}
        assert families["stek_probe_diagnoses"].samples

        code, doc, _ = probe(addr(a), "--watch", "2s", "--interval", "1s", "--tls", "1.3")
        assert code == 0
        assert doc["watch"]["rounds"] >= 2
        (names,) = doc["watch"]["key_names"]
        assert names["changed"] is False and len(names["key_names"]) == 1


@contextlib.contextmanager
def hostile(behaviour: str) -> Iterator[int]:
    """A TCP server that answers a ClientHello with garbage, or with silence."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                if behaviour == "garbage":
                    conn.sendall(b"\x16\x03\x03\xff\xff" + b"\x00" * 64)
                else:
                    stop.wait(5)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        # close() alone does not wake a thread blocked in accept() (Linux): shutdown does.
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        t.join(10)


@pytest.mark.parametrize("behaviour", ["garbage", "silence"])
def test_hostile_server_is_an_error_row(behaviour: str, tmp_path: Path) -> None:
    """Garbage or silence: no TLS server answered, an error row per version, exit 1."""
    textfile = tmp_path / "p.prom"
    with hostile(behaviour) as port:
        proc = stek_cli("probe", addr(port), "--timeout", "1s", "--textfile", str(textfile),
                        "--json")
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    doc = json.loads(proc.stdout)
    assert [(e["tls"], e["error_kind"]) for e in doc["endpoints"]] == [
        ("1.2", "unreachable"), ("1.3", "unreachable")]
    why = "nothing came back within 1s" if behaviour == "silence" else "the answer is not TLS"
    for e in doc["endpoints"]:
        assert e["error"].startswith(f"{addr(port)} TLS {e['tls']}: no TLS server answered ("), e
        assert why in e["error"] and "_ssl.c" not in e["error"], e
    assert [d["kind"] for d in doc["diagnoses"]] == ["unreachable", "unreachable"]
    families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    assert families["stek_probe_success"].samples[0].value == 0
    assert [(s.labels, s.value) for s in families["stek_probe_up"].samples] == [
        ({"target": addr(port)}, 0.0)]


def test_nothing_listening_and_usage_errors() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = int(s.getsockname()[1])
    proc = stek_cli("probe", addr(port))
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
    assert f"{addr(port)} TLS 1.2: connection refused: nothing listens there" in proc.stdout
    for args in (["nohost"], ["127.0.0.1:99999"], ["127.0.0.1:1", "127.0.0.1:1"],
                 ["127.0.0.1:1", "--tls", "1.1"], ["127.0.0.1:1", "--cert", "c.pem"],
                 ["127.0.0.1:1", "--scope", "a"], ["127.0.0.1:1", "--sni", "a", "--sni", "a"],
                 ["127.0.0.1:1", "--store", "file:/nonexistent/r.json", "--scope", "a b"]):
        proc = stek_cli("probe", *args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 or "Usage:" in proc.stderr, proc.stderr


@contextlib.contextmanager
def s_server(tmp_path: Path, certs: Certs, version: str) -> Iterator[int]:
    """``openssl s_server -www`` limited to one TLS version (``-tls1_2`` or ``-tls1_3``)."""
    port = free_port()
    flag = {"1.2": "-tls1_2", "1.3": "-tls1_3"}[version]
    cmd = [find_program("openssl"), "s_server", "-accept", f"127.0.0.1:{port}", "-www",
           flag, "-cert", str(certs.cert), "-key", str(certs.key)]
    server = Server(cmd, tmp_path / f"s_server-{version}.log", port)
    try:
        yield port
    finally:
        server.stop()


@pytest.mark.parametrize("only", ["1.2", "1.3"])
def test_endpoint_refusing_a_version_is_named_with_a_hint(
        tmp_path: Path, certs: Certs, only: str) -> None:
    """A real s_server limited to one TLS version, probed with the default --tls both:
    an error row for the refused version naming it and suggesting --tls (exit 1), the
    other version measured.  With that --tls, the probe passes."""
    refused = {"1.2": "1.3", "1.3": "1.2"}[only]
    with s_server(tmp_path, certs, only) as port:
        code, doc, err = probe(addr(port))
        assert code == 1 and err == "", err
        eps = {e["tls"]: e for e in doc["endpoints"]}
        assert eps[only]["error"] is None and eps[only]["self_resume"] is True
        assert eps[refused]["error_kind"] == "version-refused"
        (d,) = [d for d in doc["diagnoses"] if d["kind"] == "version-refused"]
        assert d["tls"] == refused and d["targets"] == [addr(port)]
        assert d["message"].startswith(f"{addr(port)} refuses TLS {refused}"), d
        assert f"--tls {only}" in d["message"], d
        code, doc, err = probe(addr(port), "--tls", only)
    assert code == 0, (err, doc)
    assert {e["tls"] for e in doc["endpoints"]} == {only}
