"""Scenarios every fleet store must pass, run by test_fleet_stores.py.

Each takes a running server (helpers.store_servers.RedisServer, RedisTLSServer,
EtcdServer or EtcdCluster: ``url``, ``kill()``, ``start()``, ``raw_values()``):
real processes, real handshakes, real kills.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers.certs import Certs, client_context, server_context
from helpers.processes import APPS
from helpers.store_servers import child_env
from helpers.waiting import wait_until, wait_watching
from stek import Policy, SealingError, StekError, init_ring, install, open_store, rotate
from stek.agent import Agent
from stek.cli import main as cli_main
from stek.stores.sealing import SharedStore, write_kek_file

# -- helpers --------------------------------------------------------------------------


def shared(url: str, kek_file: Path | None = None, **options: Any) -> SharedStore[Any]:
    store = open_store(url, kek_file=str(kek_file), **options) if kek_file else \
        open_store(url, **options)
    assert isinstance(store, SharedStore)
    return store


def with_prefix(url: str, prefix: str) -> str:
    if "?" in url and url.startswith("etcds://"):  # the TLS cluster: same options, other prefix
        head, _, query = url.partition("?")
        return head.rsplit("/", 1)[0] + "/" + prefix + "?" + query
    if url.startswith("etcd://"):
        return url.rsplit("/", 1)[0] + "/" + prefix
    return url.replace("prefix=stektest", f"prefix={prefix}")


@dataclass
class FleetReply:
    reused: bool
    session: ssl.SSLSession | None
    doc: dict[str, Any] = field(default_factory=dict)


def ask(port: int, cctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> FleetReply:
    """One connection to a tests/apps/fleet_server.py: handshake, one line each way."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(b"hi\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        return FleetReply(tls.session_reused, tls.session, json.loads(data))


class ServerProc:
    """fleet_server.py in a subprocess: stek.install() on the store URL."""

    def __init__(self, certs: Certs, url: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._err = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(APPS / "fleet_server.py"), str(certs.cert), str(certs.key), url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("ready "):
            self.stop()
            raise AssertionError(f"server did not start: {log.read_text()[-3000:]}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()


@contextmanager
def server_procs(n: int, certs: Certs, url: str, kek_file: Path,
                 tmp_path: Path) -> Iterator[list[ServerProc]]:
    env = child_env(STEK_KEK_FILE=str(kek_file))
    procs: list[ServerProc] = []
    try:
        for i in range(n):
            procs.append(ServerProc(certs, url, env, tmp_path / f"server{i}.log"))
        yield procs
    finally:
        for p in procs:
            p.stop()



def encodings(secret: bytes) -> list[bytes]:
    """Every way a key could sit in a stored value: raw, base64 (both), hex."""
    b64 = base64.b64encode(secret)
    return [secret, b64, b64.rstrip(b"="), base64.urlsafe_b64encode(secret).rstrip(b"="),
            secret.hex().encode(), secret.hex().upper().encode()]


# -- scenarios ---------------------------------------------------------------------


def two_processes_resume_each_other(server: Any, certs: Certs, version: ssl.TLSVersion,
                                    kek_file: Path, tmp_path: Path) -> None:
    """A ticket issued by one server process resumes on the other, and back again."""
    store = shared(server.url, kek_file)
    init_ring(store, Policy())
    cctx = client_context(certs, version)
    with server_procs(2, certs, server.url, kek_file, tmp_path) as (a, b):
        first = ask(a.port, cctx)
        assert not first.reused
        session = first.session
        pids, resumed = set(), 0
        for i in range(10):
            r = ask((b, a)[i % 2].port, cctx, session)
            resumed += r.reused
            pids.add(r.doc["pid"])
            session = r.session
        assert resumed == 10
        assert pids == {a.proc.pid, b.proc.pid}
        # The callback really ran on both (OpenSSL's own key would not resume across them).
        docs = [ask(p.port, cctx, session).doc for p in (a, b)]
        for doc in docs:
            assert doc["counters"]["resumed"] >= 5
            assert doc["failures"] == []
        assert sum(doc["counters"]["issued"] for doc in docs) >= 1


RACE_CHILD = r"""
import json, sys, time
from stek import open_store
from stek.rotation import rotate
url = sys.argv[1]
base, step, slots = (int(a) for a in sys.argv[2:5])
store = open_store(url)
added = []
print("ready", flush=True)
start = float(sys.stdin.readline())  # the same instant for every racer
while time.time() < start:
    time.sleep(0.001)
for i in range(1, slots + 1):
    r = rotate(store, now=base + i * step)
    added += [k.name.hex() for k in r.added]
print(json.dumps({"added": added, "ops": store.ops}))
"""


def racing_rotators(server: Any, kek_file: Path, racers: int = 8,
                    slots: int = 50) -> dict[str, Any]:
    """N rotator processes over the same slots: one key per slot, none lost or duplicated."""
    step = 60
    policy = Policy(rotate_every=step, accept_for=3600, publish_ahead=30)
    base = 28_333_334 * step  # a slot boundary
    store = shared(server.url, kek_file)
    first = init_ring(store, policy, now=base).ring
    env = child_env(STEK_KEK_FILE=str(kek_file))
    procs = [subprocess.Popen([sys.executable, "-c", RACE_CHILD, server.url, str(base), str(step),
                               str(slots)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for _ in range(racers)]
    outs = []
    try:
        for p in procs:  # every racer has started and imported stek
            assert p.stdout is not None
            assert p.stdout.readline() == b"ready\n", \
                p.communicate(timeout=60)[1].decode()[-3000:]
        start = time.time() + 0.2  # then every racer starts at the same instant
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start}\n".encode())
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err.decode()[-3000:]
            outs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    added = [name for o in outs for name in o["added"]]
    ring = store.read()
    names = {k.name.hex() for k in ring.keys}
    assert len(added) == slots, f"{len(added)} keys written for {slots} slots"
    assert len(set(added)) == slots
    assert set(added) <= names  # none lost: every write that reported success is there
    assert len(ring) == slots + 1  # the initial key + one per slot
    assert ring.generation == first.generation + slots  # one write per slot, none overwritten
    # One key per slot: activation instants are exactly the slot boundaries.
    assert sorted(k.activates_at for k in ring.keys) == [base + i * step for i in range(slots + 1)]
    assert sum(o["ops"]["cas"] for o in outs) - sum(o["ops"]["conflict"] for o in outs) == slots
    return {"conflicts": sum(o["ops"]["conflict"] for o in outs)}


def outage_keeps_serving(server: Any, certs: Certs, version: ssl.TLSVersion, kek_file: Path,
                         tmp_path: Path) -> None:
    """Store killed under load: no failed handshake, resumption goes on; then convergence."""
    store = shared(server.url, kek_file)
    init_ring(store, Policy())
    cctx = client_context(certs, version)
    with server_procs(2, certs, server.url, kek_file, tmp_path) as procs:
        stats: dict[str, list[int]] = {"up": [0, 0, 0], "down": [0, 0, 0], "back": [0, 0, 0]}
        phase = ["up"]
        stop = threading.Event()
        errors: list[str] = []

        def clients() -> None:
            session = None
            i = 0
            while not stop.is_set():
                try:
                    r = ask(procs[i % 2].port, cctx, session)
                except Exception as exc:  # a failed handshake is what we count
                    errors.append(f"{phase[0]}: {exc!r}")
                    stats[phase[0]][2] += 1
                    session = None
                    continue
                s = stats[phase[0]]
                s[0] += 1
                s[1] += r.reused
                session = r.session
                i += 1

        t = threading.Thread(target=clients)
        t.start()
        try:
            wait_until(lambda: stats["up"][0] >= 5, timeout=30)
            phase[0] = "down"
            server.kill()
            # Both servers saw the store fail (and keep serving) before it returns.
            wait_until(lambda: stats["down"][0] >= 5 and all(
                "serving the last snapshot" in p.log.read_text() for p in procs), timeout=30)
            phase[0] = "back"
            server.start()
            # Convergence: a change written after the restart reaches both servers.
            ring = init_ring(shared(server.url, kek_file), Policy(rotate_every=1800),
                             force=True).ring
            took = wait_until(lambda: all(ask(p.port, cctx).doc["generation"] == ring.generation
                                          for p in procs), timeout=10, step=0.1)
            wait_until(lambda: stats["back"][0] >= 5, timeout=30)
        finally:
            stop.set()
            t.join(30)
        assert errors == []
        for name in ("up", "down", "back"):
            done, reused, failed = stats[name]
            assert failed == 0
            assert done >= 5, stats
            # The first connection of all is a full handshake; every later one resumes.
            assert reused >= done - (1 if name == "up" else 0), stats
        assert took < 5.0, f"servers converged {took:.1f}s after the store came back"
        for p in procs:
            assert ask(p.port, cctx).doc["failures"] == []
            log = p.log.read_text()
            assert "serving the last snapshot" in log
            assert "is back" in log


def agent_backs_off_while_store_down(server: Any, kek_file: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """The agent logs each failure with a growing retry delay, then recovers."""
    store = shared(server.url, kek_file)
    agent = Agent(store, policy=Policy())
    caplog.set_level(logging.INFO, logger="stek")
    t = threading.Thread(target=agent.run)
    server.kill()
    t.start()
    try:
        # Three failed passes logged (each with its delay), the third after 0.5 + 1.0 s.
        wait_until(lambda: sum("retrying in" in r.getMessage()
                               for r in list(caplog.records)) >= 3, timeout=30)
        failures = agent.store_failures
        server.start()
        wait_until(lambda: agent.ring is not None, timeout=10)
    finally:
        agent.stop()
        t.join(10)
    delays = [float(r.getMessage().rsplit("retrying in ", 1)[1].rstrip("s"))
              for r in caplog.records if "retrying in" in r.getMessage()]
    assert failures >= 3
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert agent.ring is not None and len(agent.ring) >= 1


def nothing_readable_without_kek(server: Any, kek_file: Path) -> None:
    """No stored value contains any key's bytes, raw, base64 or hex; the scan itself works."""
    step = 60
    base = 28_333_334 * step
    store = shared(server.url, kek_file)
    init_ring(store, Policy(rotate_every=step, accept_for=600, publish_ahead=30), now=base)
    for i in range(1, 6):
        rotate(store, now=base + i * step)
    ring = store.read()
    assert len(ring) == 6
    secrets = [s for k in ring.keys for s in (k.aes_key, k.hmac_key)]

    def leaks(values: dict[bytes, bytes]) -> int:
        return sum(enc in blob for blob in (*values.values(), *values.keys())
                   for s in secrets for enc in encodings(s))

    values = server.raw_values()
    assert values and all(v.startswith(b"STEKSEAL\x02") for v in values.values())
    assert leaks(values) == 0
    assert b"stek-keyring" not in b"".join(values.values())
    # Control: the same ring stored unsealed is caught by the same scan.
    plain = shared(with_prefix(server.url, "plaincontrol"), insecure_plaintext=True)
    plain.update(lambda _cur: ring)
    assert leaks(server.raw_values()) >= len(secrets)


def wrong_kek_refused_nothing_overwritten(server: Any, kek_file: Path, tmp_path: Path) -> None:
    store = shared(server.url, kek_file)
    init_ring(store, Policy())
    before = server.raw_values()
    other = write_kek_file(tmp_path / "other.kek")
    wrong = shared(server.url, tmp_path / "other.kek")
    for attempt in (wrong.read, lambda: rotate(wrong, now=time.time() + 7200),
                    lambda: init_ring(wrong, Policy(accept_for=3600), force=True)):
        with pytest.raises(SealingError, match="wrong key-encryption key") as info:
            attempt()
        assert other.hex() not in str(info.value)
    # Without a KEK: refused outright, or refused to open when told plaintext is fine.
    with pytest.raises(StekError, match="stek kek"):
        open_store(server.url)
    with pytest.raises(SealingError, match="holds a sealed ring"):
        shared(server.url, insecure_plaintext=True).read()
    assert server.raw_values() == before
    assert store.read().keys  # the right KEK still opens it


def rekey_keeps_every_key(server: Any, kek_file: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    step = 60
    base = 28_333_334 * step
    store = shared(server.url, kek_file)
    init_ring(store, Policy(rotate_every=step, accept_for=600, publish_ahead=30), now=base)
    for i in range(1, 4):
        rotate(store, now=base + i * step)
    before = store.read()
    new_kek = tmp_path / "new.kek"
    assert cli_main(["kek", str(new_kek)]) == 0
    assert cli_main(["rekey", "--store", server.url, "--kek-file", str(kek_file),
                     "--new-kek-file", str(new_kek)]) == 0
    assert "re-sealed 4 key(s)" in capsys.readouterr().out
    after = shared(server.url, new_kek).read()
    assert after.keys == before.keys  # every key, bytes and windows
    assert after.generation == before.generation
    with pytest.raises(SealingError, match="wrong key-encryption key"):
        shared(server.url, kek_file).read()
    # A KEK file listing the new key then the old one opens values sealed under either.
    both = tmp_path / "both.kek"
    both.write_text(new_kek.read_text() + "\n".join(kek_file.read_text().splitlines()[1:]) + "\n")
    os.chmod(both, 0o600)
    assert shared(server.url, both).read().keys == before.keys


def plaintext_ring_can_be_sealed(server: Any, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    url = with_prefix(server.url, "wasplain")
    assert cli_main(["init", "--store", url, "--insecure-plaintext"]) == 0
    assert "UNSEALED" in capsys.readouterr().err
    plain = shared(url, insecure_plaintext=True).read()
    kek = tmp_path / "seal.kek"
    write_kek_file(kek)
    with pytest.raises(SealingError, match="unsealed"):
        shared(url, kek).read()
    assert cli_main(["rekey", "--store", url, "--insecure-plaintext",
                     "--new-kek-file", str(kek)]) == 0
    assert shared(url, kek).read().keys == plain.keys


def install_sees_new_key_within_a_second(server: Any, certs: Certs, kek_file: Path) -> None:
    """stek.install()'s refresher picks up another writer's rotation in under 1 s."""
    store = shared(server.url, kek_file)
    init_ring(store, Policy(rotate_every=60, accept_for=600, publish_ahead=30))
    ctx = server_context(certs)
    inst = install(ctx, shared(server.url, kek_file))
    try:
        wait_watching(inst)  # from here on, every write is announced to it
        t = time.time()
        for i in range(1, 6):
            r = rotate(store, now=t + i * 60)
            assert r.added
            took = wait_until(lambda r=r: inst.ring.generation == r.ring.generation, timeout=1.0,
                              step=0.005)
            assert took < 1.0
    finally:
        inst.uninstall()
