"""How fast a new key reaches a fleet, on real redis-server and etcd (loopback).

Consumers are *processes* that watch the store the way ``stek.install()``'s
refresher does (subscribe, re-read on notification, 5 s backstop).  Parts
(``--part``, all by default):

* ``propagation``: per store, 20 consumers; rotate N times and measure, for
  every key and every consumer, the time from the start of the rotating call
  to the moment that consumer holds the key.  Target: p99 under 1 s.  Also:
  store round trips per rotation, for one writer and for 8 writers racing on
  every slot (reads, compare-and-sets, lost races), and consumer re-reads.
* ``tls``: the same latency, plaintext against production-shaped TLS in the
  same run (Redis: ``rediss://`` with a client certificate and an ACL user;
  etcd: ``etcds://`` with a client certificate, users on, consumers as a
  read-only user).  Rotations alternate between the two in rounds, so that
  the load of a shared machine falls on both alike.  Target: TLS p99 within
  1.5x the plaintext p99.
* ``revoke``: per store, 20 consumers; revoke the active key N times
  (:func:`stek.rotation.revoke`, what ``stek revoke NAME`` calls) and
  measure from the start of that call to the last consumer no longer
  holding the key, that is, refusing its tickets.  Target: p99 under 1 s.
* ``failover``: etcd, 3 members with TLS and users, its leader killed with
  SIGKILL; Redis, a TLS primary, one replica and 3 Sentinels, its primary
  killed with SIGKILL.  Per kill: seconds from the kill to the next
  successful rotation (a writer retrying every 50 ms), and to every consumer
  holding that key; the member is then restarted and the next kill waits for
  a whole store again.

The servers come from the tests' own fixtures (tests/helpers/store_servers.py,
tests/helpers/pki.py), so the benchmark runs what the tests run.

usage: python bench/bench_propagation.py [--part propagation|tls|revoke|failover ...]
       [--rotations 100] [--revocations 50] [--consumers 20] [--kills 5]
       [--store redis|etcd ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from helpers.pki import make_pki  # noqa: E402
from helpers.store_servers import (  # noqa: E402
    EtcdCluster,
    EtcdServer,
    RedisSentinelSet,
    RedisServer,
    RedisTLSServer,
    child_env,
)
from stek import Policy, StekError, init_ring, open_store, rotate  # noqa: E402
from stek.rotation import revoke  # noqa: E402
from stek.stores.sealing import SharedStore, write_kek_file  # noqa: E402

STEP = 60
BASE = 28_333_334 * STEP
POLICY = Policy(rotate_every=STEP, accept_for=3600, publish_ahead=30)

CONSUMER = r"""
import sys, threading, time
from stek import open_store
store = open_store(sys.argv[1])
wake = threading.Event()
seen = {k.name for k in store.read().keys}
held = set(seen)
sub = store.subscribe(wake.set)
print("ready", flush=True)
reads = 0
while True:
    wake.wait(5.0)          # install()'s refresher: notification, or the backstop
    wake.clear()
    try:
        ring = store.read()
    except Exception:       # the store is failing over: keep the snapshot, as install() does
        continue
    reads += 1
    now = time.time()
    names = {k.name for k in ring.keys}
    for k in ring.keys:
        if k.name not in seen:
            print(f"seen {k.name.hex()} {now:.6f} {reads}", flush=True)
    for name in held - names:
        print(f"gone {name.hex()} {now:.6f} {reads}", flush=True)
    seen |= names
    held = names
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(pct(values, 99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1)}


class Consumers:
    """N watching consumer processes on one URL; when each one first held each key."""

    def __init__(self, url: str, n: int, kek: Path, log: Path) -> None:
        self.n = n
        self.seen: dict[str, list[float]] = {}
        self.gone: dict[str, list[float]] = {}
        self.reads = [0] * n
        self.lock = threading.Lock()
        env = child_env(STEK_KEK_FILE=str(kek))
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.procs = [subprocess.Popen([sys.executable, "-c", CONSUMER, url], env=env,
                                       stdout=subprocess.PIPE, stderr=self._log, text=True)
                      for _ in range(n)]
        for i, p in enumerate(self.procs):
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                self.stop()
                raise RuntimeError(f"consumer did not start: {log.read_text()[-2000:]}")
            threading.Thread(target=self._collect, args=(i, p), daemon=True).start()

    def _collect(self, i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            parts = line.split()
            if parts and parts[0] in ("seen", "gone"):
                events = self.seen if parts[0] == "seen" else self.gone
                with self.lock:
                    events.setdefault(parts[1], []).append(float(parts[2]))
                    self.reads[i] = int(parts[3])

    def wait_all(self, names: set[str], timeout: float) -> float | None:
        """The instant the last consumer held the last of ``names``; None on timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if all(len(self.seen.get(n, [])) == self.n for n in names):
                    return max(max(self.seen[n]) for n in names)
            time.sleep(0.02)
        return None

    def latencies(self, started: dict[str, float]) -> tuple[list[float], int]:
        with self.lock:
            lat = [t - started[n] for n in started for t in self.seen.get(n, [])]
            missing = sum(self.n - len(self.seen.get(n, [])) for n in started)
        return lat, missing

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self._log.close()


def shared(url: str, kek: Path) -> SharedStore[Any]:
    store = open_store(url, kek_file=str(kek))
    assert isinstance(store, SharedStore)
    return store


def rotate_once(store: SharedStore[Any], slot: int) -> str:
    result = rotate(store, now=slot)
    (key,) = result.added
    return key.name.hex()


# -- propagation -----------------------------------------------------------------------


def run(kind: str, rotations: int, consumers: int, workdir: Path,
        kek: Path) -> dict[str, object]:
    server = (RedisServer if kind == "redis" else EtcdServer)(workdir / kind)
    server.start()
    fleet: Consumers | None = None
    try:
        store = shared(server.url, kek)
        init_ring(store, POLICY, now=BASE)
        fleet = Consumers(server.url, consumers, kek, workdir / f"{kind}-consumers.log")
        time.sleep(1.0)
        before = dict(store.ops)
        started: dict[str, float] = {}
        for i in range(1, rotations + 1):
            t0 = time.time()
            started[rotate_once(store, BASE + i * STEP)] = t0
            time.sleep(0.1)
        ops = {k: store.ops[k] - before[k] for k in before}
        fleet.wait_all(set(started), 10)
        lat, missing = fleet.latencies(started)
        consumer_reads = sum(fleet.reads)

        # 8 writers racing on every slot (each thread with its own connection).
        racers = [shared(server.url, kek) for _ in range(8)]
        race_before = [dict(r.ops) for r in racers]
        base2 = BASE + (rotations + 1) * STEP
        race_slots = 30
        barrier = threading.Barrier(8)

        def racer(st: SharedStore[object]) -> None:
            barrier.wait()
            for j in range(1, race_slots + 1):
                rotate(st, now=base2 + j * STEP)

        threads = [threading.Thread(target=racer, args=(r,)) for r in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        race = {k: sum(r.ops[k] - b[k] for r, b in zip(racers, race_before, strict=True))
                for k in ("read", "cas", "conflict")}
        return {
            "part": "propagation", "store": kind, "consumers": consumers,
            "rotations": rotations, "samples": len(lat), "missing": missing, **ms(lat),
            "writer_ops_per_rotation": {k: round(v / rotations, 2) for k, v in ops.items()},
            "consumer_reads_per_rotation": round(consumer_reads / rotations / consumers, 2),
            "racing_8_writers_ops_per_rotation": {k: round(v / race_slots, 2)
                                                  for k, v in race.items()},
        }
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()


# -- revocation --------------------------------------------------------------------------


def revocations(kind: str, count: int, consumers: int, workdir: Path,
                kek: Path) -> dict[str, object]:
    """From ``revoke()`` to the last of the consumers no longer holding the key."""
    server = (RedisServer if kind == "redis" else EtcdServer)(workdir / f"{kind}-revoke")
    server.start()
    fleet: Consumers | None = None
    try:
        store = shared(server.url, kek)
        # Real time: a revocation makes a fresh key active at the real instant.
        init_ring(store, Policy(rotate_every=3600, accept_for=3600, publish_ahead=60))
        fleet = Consumers(server.url, consumers, kek, workdir / f"{kind}-revoke-consumers.log")
        time.sleep(1.0)
        last: list[float] = []
        for _ in range(count):
            key = store.read().encrypting_key(time.time())
            assert key is not None
            name = key.name.hex()
            t0 = time.time()
            revoke(store, [key.name])
            deadline = time.time() + 10
            while True:
                with fleet.lock:
                    gone = list(fleet.gone.get(name, []))
                if len(gone) == consumers:
                    last.append(max(gone) - t0)
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"{kind}: not every consumer dropped {name}")
                time.sleep(0.005)
            time.sleep(0.1)
        return {"part": "revoke", "store": kind, "consumers": consumers,
                "revocations": count, **ms(last)}
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()


# -- plaintext against TLS ---------------------------------------------------------------


def tls_compare(kind: str, rotations: int, consumers: int, workdir: Path,
                kek: Path, rounds: int = 4) -> dict[str, object]:
    pki = make_pki(workdir / f"{kind}-pki")
    plain: RedisServer | EtcdServer
    tls: RedisTLSServer | EtcdCluster
    if kind == "redis":
        plain, tls = RedisServer(workdir / "redis-plain"), RedisTLSServer(
            workdir / "redis-tls", pki)
        urls = {"plain": (plain.url, plain.url), "tls": (tls.url, tls.url)}
    else:
        cluster = EtcdCluster(workdir / "etcd-tls", pki, n=1)
        plain, tls = EtcdServer(workdir / "etcd-plain"), cluster
        urls = {"plain": (plain.url, plain.url), "tls": (cluster.url, cluster.server_url)}
    fleets: dict[str, Consumers] = {}
    plain.start()
    try:
        tls.start()
        stores = {label: shared(w, kek) for label, (w, _) in urls.items()}
        for label, (_, read_url) in urls.items():
            init_ring(stores[label], POLICY, now=BASE)
            fleets[label] = Consumers(read_url, consumers, kek,
                                      workdir / f"{kind}-{label}-consumers.log")
        time.sleep(1.0)
        started: dict[str, dict[str, float]] = {"plain": {}, "tls": {}}
        slot = 0
        per_round = max(1, rotations // rounds)
        for r in range(rounds):
            # Alternate which goes first, so that neither always follows the other.
            for label in (("plain", "tls") if r % 2 == 0 else ("tls", "plain")):
                for i in range(per_round):
                    t0 = time.time()
                    started[label][rotate_once(stores[label],
                                               BASE + (slot + i + 1) * STEP)] = t0
                    time.sleep(0.1)
            slot += per_round
        out: dict[str, object] = {"part": "tls", "store": kind, "consumers": consumers,
                                  "rotations": per_round * rounds}
        for label in ("plain", "tls"):
            fleets[label].wait_all(set(started[label]), 10)
            lat, missing = fleets[label].latencies(started[label])
            out[label] = {"samples": len(lat), "missing": missing, **ms(lat)}
        p99 = {label: out[label]["p99_ms"] for label in ("plain", "tls")}  # type: ignore[index]
        out["tls_over_plain_p99"] = round(p99["tls"] / p99["plain"], 2)
        return out
    finally:
        for f in fleets.values():
            f.stop()
        tls.stop()
        plain.stop()


# -- failover ----------------------------------------------------------------------------


def until_rotated(store: SharedStore[Any], slot: int, known: set[str],
                  timeout: float = 60) -> tuple[float, set[str], int]:
    """Retry the slot's rotation every 50 ms: (instant it succeeded, new key names, failures)."""
    failures = 0
    deadline = time.time() + timeout
    while True:
        try:
            ring = rotate(store, now=slot).ring
            # A failed attempt may have written before its reply was lost: the
            # key is then already there, and this attempt adds nothing.
            return time.time(), {k.name.hex() for k in ring.keys} - known, failures
        except StekError:
            failures += 1
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def failover(kind: str, kills: int, consumers: int, workdir: Path,
             kek: Path) -> dict[str, object]:
    pki = make_pki(workdir / f"{kind}-failover-pki")
    fleet: Consumers | None = None
    etcd = EtcdCluster(workdir / "etcd-cluster", pki) if kind == "etcd" else None
    rs = RedisSentinelSet(workdir / "redis-sentinel", pki) if kind == "redis" else None
    rw_url, read_url = (etcd.url, etcd.server_url) if etcd else (rs.url, rs.url)  # type: ignore[union-attr]
    kill: Callable[[], Callable[[], None]]
    if etcd is not None:
        etcd.start()

        def kill() -> Callable[[], None]:
            assert etcd is not None
            i = etcd.leader()
            etcd.kill(i)

            def restart() -> None:
                etcd.members[i].start_async()
                etcd.wait_healthy()

            return restart
    else:
        assert rs is not None
        rs.start()

        def kill() -> Callable[[], None]:
            assert rs is not None
            i = rs.primary()
            rs.kill(i)

            def restart() -> None:
                rs.nodes[i].start()  # Sentinel makes it a replica of the new primary
                rs.wait_replicated(60)

            return restart
    try:
        store = shared(rw_url, kek)
        init_ring(store, POLICY, now=BASE)
        fleet = Consumers(read_url, consumers, kek, workdir / f"{kind}-failover-consumers.log")
        to_rotation, to_fleet, failed = [], [], 0
        for n in range(1, kills + 1):
            time.sleep(1.0)  # every watch established on the whole store
            known = {k.name.hex() for k in store.read().keys}
            t_kill = time.time()
            restart = kill()
            t_ok, new, failures = until_rotated(store, BASE + n * STEP, known)
            t_all = fleet.wait_all(new, 60)
            if t_all is None:
                raise RuntimeError(f"{kind}: not every consumer got the key after kill {n}")
            to_rotation.append(t_ok - t_kill)
            to_fleet.append(t_all - t_kill)
            failed += failures
            print(f"  {kind} kill {n}: rotation after {t_ok - t_kill:.2f} s, "
                  f"every consumer after {t_all - t_kill:.2f} s", flush=True)
            restart()
        return {"part": "failover", "store": kind, "kills": kills, "consumers": consumers,
                "to_rotation_s": [round(v, 2) for v in to_rotation],
                "to_every_consumer_s": [round(v, 2) for v in to_fleet],
                "rotation_p50_s": round(statistics.median(to_rotation), 2),
                "rotation_p99_s": round(pct(to_rotation, 99), 2),
                "consumers_p50_s": round(statistics.median(to_fleet), 2),
                "consumers_p99_s": round(pct(to_fleet, 99), 2),
                "failed_attempts_per_kill": round(failed / kills, 1)}
    finally:
        if fleet is not None:
            fleet.stop()
        (etcd or rs).stop()  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--part", choices=["propagation", "tls", "revoke", "failover"],
                    action="append")
    ap.add_argument("--rotations", type=int, default=100)
    ap.add_argument("--revocations", type=int, default=50)
    ap.add_argument("--consumers", type=int, default=20)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--store", choices=["redis", "etcd"], action="append")
    args = ap.parse_args()
    kinds = args.store or ["redis", "etcd"]
    parts = args.part or ["propagation", "tls", "revoke", "failover"]
    with tempfile.TemporaryDirectory() as d:
        kek = Path(d) / "bench.kek"
        write_kek_file(kek)
        for kind in kinds:
            if "propagation" in parts:
                res = run(kind, args.rotations, args.consumers, Path(d), kek)
                print(json.dumps(res), flush=True)
                ok = res["missing"] == 0 and float(res["p99_ms"]) < 1000  # type: ignore[arg-type]
                print(f"{kind}: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms over "
                      f"{res['samples']} deliveries -> {'OK' if ok else 'MISSED TARGET'}",
                      flush=True)
            if "tls" in parts:
                res = tls_compare(kind, args.rotations, args.consumers, Path(d), kek)
                print(json.dumps(res), flush=True)
                ratio = float(res["tls_over_plain_p99"])  # type: ignore[arg-type]
                print(f"{kind}: TLS p99 / plaintext p99 = {ratio} -> "
                      f"{'OK' if ratio <= 1.5 else 'MISSED TARGET'} (1.5x)", flush=True)
            if "revoke" in parts:
                res = revocations(kind, args.revocations, args.consumers, Path(d), kek)
                print(json.dumps(res), flush=True)
                ok = float(res["p99_ms"]) < 1000  # type: ignore[arg-type]
                print(f"{kind}: revoke to the last of {args.consumers} consumers: p50 "
                      f"{res['p50_ms']} ms, p99 {res['p99_ms']} ms -> "
                      f"{'OK' if ok else 'MISSED TARGET'}", flush=True)
            if "failover" in parts:
                res = failover(kind, args.kills, args.consumers, Path(d), kek)
                print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
