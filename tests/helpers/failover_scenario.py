"""The failover scenario shared by the production-shaped etcd and Redis tests.

Two Python servers (read-only credentials where the engine has them), an
agent, and racing rotator processes run on a store while the test kills its
members; clients keep handshaking (TLS 1.2 and 1.3) with the servers the
whole time.  ``FailoverRun`` collects what everyone saw, as it happens, so
that the test's script waits for what it needs (handshakes done, a rotation
after a kill) rather than for a fixed time, and the test can assert no
failed handshake, resumption across servers, one key per slot, and no key
lost.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.certs import Certs, client_context
from helpers.fleet_scenarios import ServerProc, ask
from helpers.store_servers import child_env
from stek import Policy, init_ring, open_store
from stek.agent import Agent

# Each child runs what 'stek rotate' runs, in a loop, so that 8 of them race
# across every slot boundary without paying an interpreter start per call.
# One line per pass, as it ends: {"t": when, "ok": bool, "added": [[name, activates_at]]}.
# It stops when its stdin closes (or at the deadline in argv).
ROTATOR = r"""
import json, sys, threading, time
from stek import open_store
from stek.rotation import rotate
url, until = sys.argv[1], float(sys.argv[2])
store = open_store(url)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.is_set() and time.time() < until:
    try:
        r = rotate(store)
        line = {"ok": True, "added": [[k.name.hex(), k.activates_at] for k in r.added]}
    except Exception:
        line = {"ok": False, "added": []}
    print(json.dumps({"t": time.time(), **line}), flush=True)
    stop.wait(0.1)
"""

#: Keys are accepted for 120 s after they retire: longer than any run, so none
#: expires before check_ring() looks for it.
POLICY = Policy(rotate_every=3, accept_for=120, publish_ahead=10)


@dataclass
class FailoverRun:
    handshakes: int = 0
    resumed: int = 0
    failures: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    keys_seen: set[str] = field(default_factory=set)
    added: list[tuple[str, float]] = field(default_factory=list)
    #: When each key was reported added (same order as ``added``).
    added_at: list[float] = field(default_factory=list)
    rotate_ok: list[float] = field(default_factory=list)
    rotate_failed: list[float] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    #: ``handshakes`` when each mark was noted.
    handshakes_at: dict[str, int] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        """Note the time (and the handshake count) of a step of the script."""
        with self.lock:
            self.marks[name] = time.time()
            self.handshakes_at[name] = self.handshakes

    def handshakes_since(self, mark: str) -> int:
        with self.lock:
            return self.handshakes - self.handshakes_at[mark]

    def rotated_ok_after(self, t: float) -> bool:
        with self.lock:
            return any(x > t for x in self.rotate_ok)

    def rotation_failed_after(self, t: float) -> bool:
        with self.lock:
            return any(x > t for x in self.rotate_failed)

    def added_after(self, t: float) -> bool:
        """A rotator reported, after ``t``, adding a key that activates after ``t``."""
        with self.lock:
            return any(at > t and a > t
                       for (_, a), at in zip(self.added, self.added_at, strict=True))


def failover_run(rw_url: str, server_url: str, certs: Certs, kek_file: Path, tmp_path: Path,
                 script: Callable[[FailoverRun], None], racers: int = 8,
                 limit: float = 180) -> FailoverRun:
    """Run the fleet while ``script(run)`` kills and restarts members, until it returns
    (the rotators give up after ``limit`` s, a bound for a run that hangs)."""
    store = open_store(rw_url, kek_file=str(kek_file))
    init_ring(store, POLICY)
    run = FailoverRun()
    env = child_env(STEK_KEK_FILE=str(kek_file))
    until = time.time() + limit
    logs = [tmp_path / f"rotator{i}.log" for i in range(racers)]
    rotators = []
    for log in logs:
        with open(log, "wb") as err:
            rotators.append(subprocess.Popen([sys.executable, "-c", ROTATOR, rw_url, str(until)],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=err, env=env))

    def collect(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            doc = json.loads(raw)
            with run.lock:
                (run.rotate_ok if doc["ok"] else run.rotate_failed).append(doc["t"])
                for name, activates in doc["added"]:
                    run.added.append((name, activates))
                    run.added_at.append(doc["t"])

    readers = [threading.Thread(target=collect, args=(p,), daemon=True) for p in rotators]
    for t in readers:
        t.start()
    servers: list[ServerProc] = []
    agent = Agent(open_store(rw_url, kek_file=str(kek_file)), policy=POLICY, interval=1)
    agent_thread = threading.Thread(target=agent.run, daemon=True)
    stop = threading.Event()
    lock = run.lock

    def client(version: Any) -> None:
        import ssl

        cctx = client_context(certs, version)
        session: ssl.SSLSession | None = None
        i = 0
        while not stop.is_set():
            srv = servers[i % 2]
            i += 1
            try:
                r = ask(srv.port, cctx, session)
            except Exception as exc:  # a failed handshake is what this test counts
                with lock:
                    run.failures.append(f"{time.time():.1f} {exc!r}")
                session = None
                continue
            with lock:
                run.handshakes += 1
                run.resumed += r.reused
                run.pids.add(r.doc["pid"])
                run.keys_seen.update(r.doc["keys"])
            session = r.session
            time.sleep(0.02)

    import ssl

    clients = [threading.Thread(target=client, args=(v,), daemon=True)
               for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)]
    try:
        for i in range(2):
            servers.append(ServerProc(certs, server_url, env, tmp_path / f"server{i}.log"))
        agent_thread.start()
        for t in clients:
            t.start()
        script(run)
        for p in rotators:
            assert p.stdin is not None
            p.stdin.close()
        for p, reader, log in zip(rotators, readers, logs, strict=True):
            assert p.wait(60) == 0, log.read_text()[-3000:]
            reader.join(30)
    finally:
        stop.set()
        for t in clients:
            if t.is_alive():
                t.join(30)
        agent.stop()
        if agent_thread.is_alive():
            agent_thread.join(10)
        for s in servers:
            s.stop()
        for p in rotators:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return run


def check_ring(run: FailoverRun, rw_url: str, kek_file: Path) -> None:
    """One key per slot, every key any server or rotator saw still in the ring."""
    ring = open_store(rw_url, kek_file=str(kek_file)).read()
    names = {k.name.hex() for k in ring.keys}
    starts = [k.activates_at for k in ring.keys]
    assert len(starts) == len(set(starts)), "two keys for one slot"
    assert all(a % POLICY.rotate_every == 0 for a in starts[1:])
    # Keys expire 120 s after retiring: none did within the run, so every key
    # anyone saw must still be there.
    assert run.keys_seen <= names, run.keys_seen - names
    assert {n for n, _ in run.added} <= names
    assert len(run.added) == len({n for n, _ in run.added})
    slots = [a for _, a in run.added]
    assert len(slots) == len(set(slots)), "two rotators reported a key for one slot"
