"""The failover scenario shared by the production-shaped etcd and Redis tests.

Two Python servers (read-only credentials where the engine has them), an
agent, and racing rotator processes run on a store while the test kills its
members; clients keep handshaking (TLS 1.2 and 1.3) with the servers the
whole time.  ``FailoverRun`` collects what everyone saw so that the test can assert
no failed handshake, resumption across servers, one key per slot, and no
key lost.
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
ROTATOR = r"""
import json, sys, time
from stek import open_store
from stek.rotation import rotate
url, until = sys.argv[1], float(sys.argv[2])
store = open_store(url)
added, ok, failed = [], [], 0
while time.time() < until:
    try:
        r = rotate(store)
        added += [[k.name.hex(), k.activates_at] for k in r.added]
        ok.append(time.time())
    except Exception as exc:
        failed += 1
    time.sleep(0.1)
print(json.dumps({"added": added, "ok": ok, "failed": failed}))
"""

POLICY = Policy(rotate_every=3, accept_for=60, publish_ahead=10)


@dataclass
class FailoverRun:
    handshakes: int = 0
    resumed: int = 0
    failures: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    keys_seen: set[str] = field(default_factory=set)
    added: list[tuple[str, float]] = field(default_factory=list)
    rotate_ok: list[float] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)


def failover_run(rw_url: str, server_url: str, certs: Certs, kek_file: Path, tmp_path: Path,
                 script: Callable[[FailoverRun], None], racers: int = 8,
                  length: float = 40) -> FailoverRun:
    """Run the fleet for ``length`` s while ``script(run)`` kills and restarts members."""
    store = open_store(rw_url, kek_file=str(kek_file))
    init_ring(store, POLICY)
    run = FailoverRun()
    env = child_env(STEK_KEK_FILE=str(kek_file))
    until = time.time() + length
    rotators = [subprocess.Popen([sys.executable, "-c", ROTATOR, rw_url, str(until)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
                for _ in range(racers)]
    servers = [ServerProc(certs, server_url, env, tmp_path / f"server{i}.log") for i in range(2)]
    agent = Agent(open_store(rw_url, kek_file=str(kek_file)), policy=POLICY, interval=1)
    agent_thread = threading.Thread(target=agent.run, daemon=True)
    agent_thread.start()
    stop = threading.Event()
    lock = threading.Lock()

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
    for t in clients:
        t.start()
    try:
        script(run)
        for p in rotators:
            out, err = p.communicate(timeout=length + 120)
            assert p.returncode == 0, err.decode()[-3000:]
            doc = json.loads(out)
            run.added += [(n, a) for n, a in doc["added"]]
            run.rotate_ok += doc["ok"]
    finally:
        stop.set()
        for t in clients:
            t.join(30)
        agent.stop()
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
    # Keys expire 60 s after retiring: none did within the run, so every key
    # anyone saw must still be there.
    assert run.keys_seen <= names, run.keys_seen - names
    assert {n for n, _ in run.added} <= names
    assert len(run.added) == len({n for n, _ in run.added})
    slots = [a for _, a in run.added]
    assert len(slots) == len(set(slots)), "two rotators reported a key for one slot"
