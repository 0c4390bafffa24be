"""How fast a new key reaches a fleet, on real redis-server and etcd (loopback).

For each store: start the server, start 20 consumer *processes* that watch
the store the way ``stek.install()``'s refresher does (subscribe, re-read on
notification, 5 s backstop), then rotate N times and measure, for every key
and every consumer, the time from the start of the rotating call to the
moment that consumer holds the key.  Target: p99 under 1 s.

Also reported: store round trips per rotation, for one writer and for 8
writers racing on every slot (reads, compare-and-sets, lost races), and
consumer re-reads per rotation.

usage: python bench/bench_propagation.py [--rotations 100] [--consumers 20] [--store redis|etcd]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from servers_fleet import EtcdServer, RedisServer, child_env  # noqa: E402
from stek import Policy, init_ring, open_store, rotate  # noqa: E402
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
sub = store.subscribe(wake.set)
print("ready", flush=True)
reads = 0
while True:
    wake.wait(5.0)          # install()'s refresher: notification, or the backstop
    wake.clear()
    ring = store.read()
    reads += 1
    now = time.time()
    for k in ring.keys:
        if k.name not in seen:
            seen.add(k.name)
            print(f"seen {k.name.hex()} {now:.6f} {reads}", flush=True)
"""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run(kind: str, rotations: int, consumers: int, workdir: Path) -> dict[str, object]:
    server = (RedisServer if kind == "redis" else EtcdServer)(workdir / kind)
    kek = workdir / "bench.kek"
    if not kek.exists():
        write_kek_file(kek)
    server.start()
    procs: list[subprocess.Popen[str]] = []
    try:
        store = open_store(server.url, kek_file=str(kek))
        assert isinstance(store, SharedStore)
        init_ring(store, POLICY, now=BASE)
        env = child_env(STEK_KEK_FILE=str(kek))
        seen: dict[str, list[float]] = {}
        reads: list[int] = [0] * consumers
        lock = threading.Lock()

        def collect(i: int, p: subprocess.Popen[str]) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                parts = line.split()
                if parts and parts[0] == "seen":
                    with lock:
                        seen.setdefault(parts[1], []).append(float(parts[2]))
                        reads[i] = int(parts[3])

        for i in range(consumers):
            p = subprocess.Popen([sys.executable, "-c", CONSUMER, server.url], env=env,
                                 stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
            threading.Thread(target=collect, args=(i, p), daemon=True).start()
        time.sleep(1.0)

        before = dict(store.ops)
        started: dict[str, float] = {}
        for i in range(1, rotations + 1):
            t0 = time.time()
            result = rotate(store, now=BASE + i * STEP)
            (key,) = result.added
            started[key.name.hex()] = t0
            time.sleep(0.1)
        ops = {k: store.ops[k] - before[k] for k in before}
        deadline = time.time() + 10
        while time.time() < deadline:
            with lock:
                if all(len(seen.get(n, [])) == consumers for n in started):
                    break
            time.sleep(0.05)
        with lock:
            lat = [t - started[n] for n in started for t in seen.get(n, [])]
            missing = sum(consumers - len(seen.get(n, [])) for n in started)
            consumer_reads = sum(reads)

        # 8 writers racing on every slot (each thread with its own connection).
        racers = [open_store(server.url, kek_file=str(kek)) for _ in range(8)]
        race_before = [dict(r.ops) for r in racers if isinstance(r, SharedStore)]
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
        race = {k: sum(r.ops[k] - b[k] for r, b in zip(racers, race_before, strict=True)
                       if isinstance(r, SharedStore)) for k in ("read", "cas", "conflict")}
        return {
            "store": kind,
            "consumers": consumers,
            "rotations": rotations,
            "samples": len(lat),
            "missing": missing,
            "p50_ms": round(statistics.median(lat) * 1000, 2),
            "p99_ms": round(pct(lat, 99) * 1000, 2),
            "max_ms": round(max(lat) * 1000, 2),
            "writer_ops_per_rotation": {k: round(v / rotations, 2) for k, v in ops.items()},
            "consumer_reads_per_rotation": round(consumer_reads / rotations / consumers, 2),
            "racing_8_writers_ops_per_rotation": {k: round(v / race_slots, 2)
                                                  for k, v in race.items()},
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rotations", type=int, default=100)
    ap.add_argument("--consumers", type=int, default=20)
    ap.add_argument("--store", choices=["redis", "etcd"], action="append")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for kind in args.store or ["redis", "etcd"]:
            res = run(kind, args.rotations, args.consumers, Path(d))
            print(json.dumps(res))
            ok = res["missing"] == 0 and float(res["p99_ms"]) < 1000  # type: ignore[arg-type]
            print(f"{kind}: p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms over "
                  f"{res['samples']} deliveries -> {'OK' if ok else 'MISSED TARGET'}")


if __name__ == "__main__":
    main()
