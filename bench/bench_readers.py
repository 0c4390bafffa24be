"""What installations cost a process: threads, file descriptors, memory, store connections.

For each store (a file store, a real redis-server on loopback) and each N,
a fresh Python process builds N server contexts, measures itself, installs
stek on all N (one URL, as an SNI server would), waits for the background
to settle, and measures again.  Reported: the increase in threads, open
descriptors, RSS, and (Redis) the server's connected clients, per process
and per installation.  Every figure is a difference inside one process, so
the machine's load does not enter it.

To compare with another version of stek, run the same script with
``PYTHONPATH=that/checkout/src``.

usage: python bench/bench_readers.py [--n 1 10 50] [--store file redis]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]  # helpers.store_servers: the tests' own redis-server

from helpers.store_servers import RedisServer  # noqa: E402

PROBE = r"""
import json, os, ssl, sys, threading, time
import stek

def measure():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {"threads": int(status["Threads"]), "fds": len(os.listdir("/proc/self/fd")),
            "rss_kb": int(status["VmRSS"].split()[0])}

url, n, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctxs = []
for _ in range(n):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctxs.append(ctx)
warm = stek.open_store(url)
warm.read()  # import and warm the store's client code before measuring
time.sleep(0.5)
print(json.dumps(measure()), flush=True)
sys.stdin.readline()  # the parent counts the server's clients
insts = [stek.install(c, url) for c in ctxs]
time.sleep(1.5)  # watches connected, first notifications handled
print(json.dumps(measure()), flush=True)
sys.stdin.read()  # stay alive (connections open) until the parent has counted them
"""


def redis_clients(port: int) -> int:
    import redis

    c = redis.Redis(host="127.0.0.1", port=port)
    try:
        return int(c.info("clients")["connected_clients"]) - 1  # minus this one
    finally:
        c.close()


def run(url: str, n: int, certs: tuple[str, str], env: dict[str, str],
        redis_port: int | None) -> dict[str, float]:
    proc = subprocess.Popen([sys.executable, "-c", PROBE, url, str(n), *certs], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    b = json.loads(proc.stdout.readline())
    clients0 = redis_clients(redis_port) if redis_port is not None else 0
    proc.stdin.write("go\n")
    proc.stdin.flush()
    a = json.loads(proc.stdout.readline())
    clients = (redis_clients(redis_port) if redis_port is not None else 0) - clients0
    proc.stdin.close()
    proc.wait(30)
    return {"threads": a["threads"] - b["threads"], "fds": a["fds"] - b["fds"],
            "rss_mb": (a["rss_kb"] - b["rss_kb"]) / 1024, "connections": clients}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--store", nargs="+", default=["file", "redis"])
    args = ap.parse_args()

    import stek
    from stek.stores.sealing import write_kek_file

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        certs = make_certs(d)
        kek = d / "bench.kek"
        write_kek_file(kek)
        env = dict(os.environ)
        env["STEK_KEK_FILE"] = str(kek)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in [env.get("PYTHONPATH", ""), str(ROOT / "src")] if p)
        print(f"{'store':6} {'N':>4} {'threads':>8} {'fds':>5} {'RSS MB':>7} {'conns':>6}"
              f"   per install: {'threads':>7} {'fds':>5} {'RSS MB':>7} {'conns':>6}")
        for kind in args.store:
            server = None
            if kind == "redis":
                server = RedisServer(d / "redis")
                server.start()
                url = server.url
                stek.init_ring(stek.open_store(url, kek_file=str(kek)), stek.Policy())
            else:
                url = f"file:{d}/ring.json"
                stek.init_ring(stek.open_store(url), stek.Policy())
            try:
                for n in args.n:
                    r = run(url, n, certs, env, server.port if server else None)
                    print(f"{kind:6} {n:>4} {r['threads']:>8} {r['fds']:>5} {r['rss_mb']:>7.2f} "
                          f"{r['connections']:>6}   {'':13}{r['threads'] / n:>7.2f} "
                          f"{r['fds'] / n:>5.2f} {r['rss_mb'] / n:>7.3f} "
                          f"{r['connections'] / n:>6.2f}", flush=True)
            finally:
                if server is not None:
                    server.stop()


def make_certs(d: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost (openssl req)."""
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


if __name__ == "__main__":
    main()
