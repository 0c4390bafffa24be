"""Fleet scale: how a rotation reaches thousands of consumers, direct or through mirrors.

One machine simulates the fleet's consumers against real redis-server and
etcd on loopback.  Consumers are lightweight (asyncio tasks, many per
process) but do what a stek worker does on a change: the store's
notification (Redis pub/sub, an etcd watch stream), then a re-read of the
ring and its unsealing under the KEK.  Each holds the store connections a
process running ``stek.install()`` or ``stek agent`` holds: on Redis one
(RESP3: the reads and the notifications on one connection), on etcd two (a
watch stream and a connection for reads).

Scenarios:

* direct watchers on Redis (100, 1,000, 5,000) and on etcd (100, 1,000);
* tiered: 100 mirrors (each a Redis watcher that writes its file with
  :class:`stek.mirror.Mirror`, as ``stek agent --mirror`` does) x 50 file
  readers per mirror, which poll the file as the file store's fallback watch
  does (``stat()`` every ``stek.stores._filewatch.POLL_INTERVAL``, 0.2 s), then
  read and parse it.  This is the slow path: a worker whose file store
  watches with inotify (Linux) wakes when the file is replaced.  5,000
  inotify instances would not fit one machine's default
  ``fs.inotify.max_user_instances`` (128), while a real host has one per
  worker process.

After each rotation (a sealed compare-and-set on the store) it reports
propagation from the start of the write to each consumer holding the new
ring (p50 / p99 / max), the store server's CPU time during that rotation,
its resident memory, and the established connections the consumers hold
(the benchmark's own writer's are not counted).  Targets: p99 < 1 s
for direct watchers (5,000 on Redis, 1,000 on etcd), p99 < 2 s from the
store write to the last tiered reader.

usage: nice python bench/bench_fleet_scale.py [--rotations 5] [--only redis-5000 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
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

from helpers.store_servers import EtcdServer, RedisServer  # noqa: E402
from stek import Policy, init_ring, open_store, rotate  # noqa: E402
from stek.keyring import Keyring  # noqa: E402
from stek.stores.sealing import SharedStore, read_kek_file, write_kek_file  # noqa: E402

STEP = 60
BASE = 28_333_334 * STEP
POLICY = Policy(rotate_every=STEP, accept_for=3600, publish_ahead=30)
PER_PROCESS = 1250  # consumers per simulating process
READY_TIMEOUT = 300.0
DELIVERY_TIMEOUT = 30.0

SCENARIOS = {
    "redis-100": ("redis", 100, 0),
    "redis-1000": ("redis", 1000, 0),
    "redis-5000": ("redis", 5000, 0),
    "etcd-100": ("etcd", 100, 0),
    "etcd-1000": ("etcd", 1000, 0),
    "tiered-100x50": ("redis", 100, 50),
}


# -- consumers (in child processes) ---------------------------------------------------


_LAST: dict[str, tuple[bytes, Keyring]] = {}


def _decoder(kek_file: str, ring_id: str) -> Callable[[bytes | None], Keyring]:
    """Unseal and parse a ring, as a worker does, once per distinct value in this process.

    Every consumer fetches the value from the store itself; only the
    unsealing (about 0.1-0.3 ms each, timed at start-up) is shared, because
    real workers pay it on their own cores, in parallel, while here
    thousands of them share two cores.
    """
    from stek.stores.sealing import Sealer

    keks = read_kek_file(kek_file)
    sealer = Sealer(keks[0], tuple(keks[1:]))

    def decode(blob: bytes | None) -> Keyring:
        assert blob is not None
        last = _LAST.get(kek_file)
        if last is not None and last[0] == blob:
            return last[1]
        ring = Keyring.from_bytes(sealer.open(blob, "bench", ring_id)[0], "bench")
        _LAST[kek_file] = (blob, ring)
        return ring

    return decode


def decode_cost(kek_file: str, ring_id: str, blob: bytes) -> float:
    """Seconds one worker spends unsealing and parsing the ring."""
    from stek.stores.sealing import Sealer

    keks = read_kek_file(kek_file)
    sealer = Sealer(keks[0], tuple(keks[1:]))
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        Keyring.from_bytes(sealer.open(blob, "bench", ring_id)[0], "bench")
    return (time.perf_counter() - t0) / n


def _report(kind: str, ident: int, ring: Keyring) -> None:
    print(f"{kind} {ident} {ring.generation} {time.time():.6f}", flush=True)


async def _redis_consumer(url: str, decode: Callable[[bytes | None], Keyring],
                          on_ring: Callable[[Keyring], None], ready: asyncio.Event) -> None:
    """One RESP3 connection for the notifications and the reads, as the Redis store holds."""
    from urllib.parse import urlsplit

    import redis.asyncio as aredis

    where = urlsplit(url)
    conn: Any = aredis.Connection(host=where.hostname, port=where.port, protocol=3,
                                  socket_timeout=None)  # idle between rotations
    await conn.connect()
    pushed = asyncio.Event()

    async def on_push(message: list[Any]) -> list[Any]:
        if message[0] == b"message":
            pushed.set()
        return message

    conn._parser.set_pubsub_push_handler(on_push)

    async def get() -> bytes | None:
        await conn.send_command("GET", "bench:keyring")
        value: bytes | None = await conn.read_response()
        return value

    await conn.send_command("SUBSCRIBE", "bench:changed")
    await conn.read_response(push_request=True)
    ring = decode(await get())  # the start-up read
    generation = ring.generation
    on_ring(ring)
    ready.set()
    while True:
        if not pushed.is_set():  # a push met while reading a reply has set it already
            await conn.read_response(push_request=True)
            if not pushed.is_set():
                continue
        pushed.clear()
        ring = decode(await get())
        if ring.generation != generation:
            generation = ring.generation
            on_ring(ring)


async def _etcd_consumer(base: str, decode: Callable[[bytes | None], Keyring],
                         on_ring: Callable[[Keyring], None], ready: asyncio.Event) -> None:
    import aiohttp

    key64 = base64.b64encode(b"/bench/keyring").decode()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        watch = await session.post(f"{base}/v3/watch", json={"create_request": {"key": key64}})
        generation = -1
        async for line in watch.content:
            result = json.loads(line).get("result", {})
            if result.get("created"):
                ready.set()
            elif result.get("events"):
                async with session.post(f"{base}/v3/kv/range", json={"key": key64}) as resp:
                    body = await resp.json()
                ring = decode(base64.b64decode(body["kvs"][0]["value"]))
                if ring.generation != generation:
                    generation = ring.generation
                    on_ring(ring)


async def _file_reader(path: Path, ident: int, ready: asyncio.Event) -> None:
    from stek.stores._filewatch import POLL_INTERVAL as poll

    signature: tuple[int, int, int] | None = None
    generation = -1
    ready.set()
    await asyncio.sleep(poll * (ident % 97) / 97)  # not all in step
    while True:
        try:
            st = os.stat(path)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            sig = None
        if sig is not None and sig != signature:
            signature = sig
            ring = Keyring.from_bytes(path.read_bytes(), str(path))
            if ring.generation != generation:
                generation = ring.generation
                _report("seen", ident, ring)
        await asyncio.sleep(poll)


async def _child(mode: str, args: dict[str, Any]) -> None:
    tasks, events = [], []
    first = args["first"]
    for i in range(first, first + args["count"]):
        ready = asyncio.Event()
        events.append(ready)
        if mode == "redis":
            tasks.append(_redis_consumer(args["url"], _decoder(args["kek"], args["ring_id"]),
                                         lambda ring, i=i: _report("seen", i, ring), ready))
        elif mode == "etcd":
            tasks.append(_etcd_consumer(args["url"], _decoder(args["kek"], args["ring_id"]),
                                        lambda ring, i=i: _report("seen", i, ring), ready))
        elif mode == "mirror":
            from stek.mirror import Mirror

            mirror = Mirror(Path(args["dir"]) / f"mirror-{i}.json", source=args["url"])

            def wrote(ring: Keyring, i: int = i, m: Mirror = mirror) -> None:
                m.write(ring)
                _report("mirror", i, ring)

            tasks.append(_redis_consumer(args["url"], _decoder(args["kek"], args["ring_id"]),
                                         wrote, ready))
        else:  # readers: args["per"] readers per mirror file
            path = Path(args["dir"]) / f"mirror-{i // args['per']}.json"
            tasks.append(_file_reader(path, i, ready))
    running = []
    for start in range(0, len(tasks), 100):  # connect in batches
        batch = [asyncio.ensure_future(t) for t in tasks[start:start + 100]]
        running += batch
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in
                                                events[start:start + 100])), READY_TIMEOUT)
    print("ready", flush=True)
    await asyncio.gather(*running)


# -- the store server, measured from outside ------------------------------------------


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def established(port: int) -> int:
    """Established TCP connections whose local port is the server's (/proc/net/tcp)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


# -- a scenario ---------------------------------------------------------------------------


class Consumers:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.seen: dict[str, dict[int, list[float]]] = {"seen": {}, "mirror": {}}
        self.lock = threading.Lock()

    def spawn(self, mode: str, total: int, **args: Any) -> None:
        for first in range(0, total, PER_PROCESS):
            spec = json.dumps({**args, "first": first, "count": min(PER_PROCESS, total - first)})
            p = subprocess.Popen([sys.executable, __file__, "--child", mode, spec],
                                 stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            ready = threading.Event()
            threading.Thread(target=self._collect, args=(p, ready), daemon=True).start()
            deadline = time.monotonic() + READY_TIMEOUT
            while not ready.wait(0.5):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{mode} consumers did not start (exit {p.poll()})")

    def _collect(self, p: subprocess.Popen[str], ready: threading.Event) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            if line.strip() == "ready":
                ready.set()
                continue
            kind, _ident, gen, t = line.split()
            with self.lock:
                self.seen[kind].setdefault(int(gen), []).append(float(t))

    def wait(self, kind: str, gen: int, want: int, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.seen[kind].get(gen, [])) >= want:
                    break
            time.sleep(0.02)
        with self.lock:
            return list(self.seen[kind].get(gen, []))

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def scenario(name: str, rotations: int, workdir: Path, kek: Path) -> dict[str, Any]:
    kind, clients, readers = SCENARIOS[name]

    class ManyClientsRedis(RedisServer):
        def _cmd(self) -> list[str]:  # the default maxclients (10,000) would refuse 5,000
            return [*super()._cmd(), "--maxclients", "19000"]

    server = (ManyClientsRedis if kind == "redis" else EtcdServer)(workdir / name)
    server.start()
    assert server.proc is not None
    pid = server.proc.pid
    consumers = Consumers()
    mirror_dir = Path(tempfile.mkdtemp(prefix="stek-bench-", dir="/dev/shm"))
    try:
        if kind == "redis":
            url = f"redis://127.0.0.1:{server.port}/0?prefix=bench"
        else:
            url = f"etcd://127.0.0.1:{server.port}/bench"
        store = open_store(url, kek_file=str(kek))
        assert isinstance(store, SharedStore)
        init_ring(store, POLICY, now=BASE)
        writer_connections = established(server.port)  # the benchmark's own rotating store
        started = time.monotonic()
        if readers:
            consumers.spawn("mirror", clients, url=url, kek=str(kek), ring_id=store.ring_id,
                            dir=str(mirror_dir))
            consumers.spawn("readers", clients * readers, dir=str(mirror_dir), per=readers)
        else:
            consumers.spawn(kind, clients, url=url if kind == "redis" else
                            f"http://127.0.0.1:{server.port}", kek=str(kek), ring_id=store.ring_id)
        setup = time.monotonic() - started
        raw = store.read_raw()
        assert raw is not None
        unseal_ms = decode_cost(str(kek), store.ring_id, raw) * 1000
        want = clients * readers if readers else clients
        time.sleep(2.0)
        cpu0, idle_t0 = server_cpu(pid), time.monotonic()
        time.sleep(3.0)
        idle_cpu = (server_cpu(pid) - cpu0) / (time.monotonic() - idle_t0)
        rows = []
        for r in range(1, rotations + 1):
            cpu_before = server_cpu(pid)
            t0 = time.time()
            ring = rotate(store, now=BASE + r * STEP).ring
            seen = consumers.wait("seen", ring.generation, want, DELIVERY_TIMEOUT)
            lat = [t - t0 for t in seen]
            row = {
                "rotation": r,
                "delivered": len(lat),
                "missing": want - len(lat),
                "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None,
                "p99_ms": round(pct(lat, 99) * 1000, 1) if lat else None,
                "max_ms": round(max(lat) * 1000, 1) if lat else None,
                "server_cpu_ms": round((server_cpu(pid) - cpu_before) * 1000, 1),
            }
            if readers:
                mirrored = consumers.wait("mirror", ring.generation, clients, 1.0)
                row["mirrors_p99_ms"] = round(pct([t - t0 for t in mirrored], 99) * 1000, 1)
            rows.append(row)
            print(f"  {name} rotation {r}: {json.dumps(row)}", flush=True)
            time.sleep(1.0)
        lat_all = [v for row in rows for v in (row["p99_ms"],) if v is not None]
        connections = established(server.port)  # one count for both columns
        return {
            "scenario": name,
            "store_clients": clients,
            "consumers": want,
            "setup_s": round(setup, 1),
            "unseal_ms_per_consumer": round(unseal_ms, 3),
            "server_connections": connections,
            "consumer_connections": connections - writer_connections,
            "server_rss_mb": round(server_rss_mb(pid), 1),
            "server_idle_cpu_pct": round(idle_cpu * 100, 1),
            "server_cpu_ms_per_rotation": round(statistics.median(
                row["server_cpu_ms"] for row in rows), 1),
            "p50_ms": statistics.median(row["p50_ms"] for row in rows
                                        if row["p50_ms"] is not None),
            "p99_ms_worst_rotation": max(lat_all) if lat_all else None,
            "max_ms": max((row["max_ms"] for row in rows if row["max_ms"] is not None),
                          default=None),
            "missing": sum(row["missing"] for row in rows),
            "rotations": rows,
        }
    finally:
        consumers.stop()
        server.stop()
        shutil.rmtree(mirror_dir, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(_child(sys.argv[2], json.loads(sys.argv[3])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rotations", type=int, default=5)
    ap.add_argument("--only", action="append", choices=list(SCENARIOS))
    args = ap.parse_args()
    # SIGTERM unwinds like ^C, so the servers and consumers started here are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Thousands of sockets: each consumer process and redis-server inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start, "
          f"RLIMIT_NOFILE {soft} -> {hard}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as d:
        kek = Path(d) / "bench.kek"
        write_kek_file(kek)
        for name in args.only or list(SCENARIOS):
            res = scenario(name, args.rotations, Path(d), kek)
            results.append(res)
            summary = {k: v for k, v in res.items() if k != "rotations"}
            print(json.dumps(summary), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| scenario | store clients | consumers | p50 | p99 (worst rotation) | max | "
          "server CPU / rotation | server idle CPU | server RSS | consumers' connections |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scenario']} | {r['store_clients']} | {r['consumers']} | {r['p50_ms']} ms | "
              f"{r['p99_ms_worst_rotation']} ms | {r['max_ms']} ms | "
              f"{r['server_cpu_ms_per_rotation']} ms | {r['server_idle_cpu_pct']} % | "
              f"{r['server_rss_mb']} MB | {r['consumer_connections']} |")


if __name__ == "__main__":
    main()
