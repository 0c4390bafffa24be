"""A root agent and workers running as nobody, on one host: on the agent's own ring they
are told what to do (the warning names the mirror recipe); with that recipe
(--mirror --mirror-group) they resume every reconnect."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import ssl
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.certs import Certs, client_context
from helpers.ports import free_port
from integration.test_agent_process import agent, stop, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")

#: A worker: loads its certificate as root, becomes nobody (as gunicorn's and uvicorn's
#: workers do with --user), installs stek as the hooks do (rotate=True), then answers
#: connections and prints stek's counters after each.
WORKER = """
import logging, os, socket, ssl, sys
import stek, stek.installation, stek.stores.file, stek.mirror, stek._refresh, stek._reactor
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
store, cert, key, port, uid, gid = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
listener = socket.create_server(("127.0.0.1", int(port)))
os.setgroups([])
os.setgid(int(gid))
os.setuid(int(uid))
handle = stek.install(ctx, store, rotate=True)
print("ready", os.getuid(), flush=True)
while True:
    conn, _ = listener.accept()
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(16)
            tls.sendall(b"ok\\n")
    except (ssl.SSLError, OSError):
        conn.close()
    print(handle.counters, flush=True)
"""


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory nobody may traverse (tmp_path is root's, 0700), as /run is."""
    d = Path(tempfile.mkdtemp(prefix="stek-nobody-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def readable_certs(certs: Certs, base: Path) -> tuple[Path, Path]:
    cert, key = base / "cert.pem", base / "key.pem"
    shutil.copy(certs.cert, cert)
    shutil.copy(certs.key, key)
    return cert, key


def worker(store: str, cert: Path, key: Path, port: int, log: Path):  # type: ignore[no-untyped-def]
    nobody = pwd.getpwnam("nobody")
    return agent([sys.executable, "-c", WORKER, store, str(cert), str(key), str(port),
                  str(nobody.pw_uid), str(nobody.pw_gid)], log)


def reconnects(port: int, n: int, certs: Certs) -> int:
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    session = None
    resumed = 0
    for _ in range(n + 1):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"hi")
            tls.recv(16)
            resumed += tls.session_reused
            session = tls.session
    return resumed


def root_agent(base: Path, tmp_path: Path, *args: str):  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "stek.cli", "agent", "--no-metrics",
           "--store", f"file:{base / 'stek' / 'keyring.json'}", *args]
    return agent(cmd, tmp_path / "agent.log")


def test_worker_on_the_agents_own_ring_is_told_the_recipe(base: Path, tmp_path: Path,
                                                          certs: Certs) -> None:
    cert, key = readable_certs(certs, base)
    ring = base / "stek" / "keyring.json"
    port = free_port()
    log = tmp_path / "worker.log"
    with root_agent(base, tmp_path) as a:
        wait_for("the agent's ring", lambda: ring.exists())
        with worker(f"file:{ring}", cert, key, port, log) as w:
            wait_for("the worker", lambda: "ready" in log.read_text())
            assert reconnects(port, 10, certs) == 0  # full handshakes only
            stop(w)
        stop(a)
    text = log.read_text()
    warnings = [ln for ln in text.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1, text
    assert "Permission denied" in warnings[0]
    assert "stek agent --mirror --mirror-group GROUP" in warnings[0], warnings[0]
    assert "STEK_STORE=file:/run/stek/mirror.json" in warnings[0]


def test_the_mirror_recipe_lets_nobody_resume(base: Path, tmp_path: Path, certs: Certs) -> None:
    cert, key = readable_certs(certs, base)
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    mirror = base / "mirror" / "mirror.json"
    port = free_port()
    log = tmp_path / "worker.log"
    with root_agent(base, tmp_path, "--mirror", f"file:{mirror}", "--mirror-group", group) as a:
        wait_for("the mirror", lambda: mirror.exists())
        with worker(f"file:{mirror}", cert, key, port, log) as w:
            wait_for("the worker", lambda: "ready" in log.read_text())
            assert reconnects(port, 10, certs) == 10
            wait_for("the counters", lambda: "resumed=10" in log.read_text())
            stop(w)
        stop(a)
    text = log.read_text()
    assert f"ready {pwd.getpwnam('nobody').pw_uid}" in text
    # rotate=True (as the hooks): the mirror is served read-only, said once.
    warnings = [ln for ln in text.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1 and "serving it read-only" in warnings[0], text
