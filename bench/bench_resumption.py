"""Resumed handshakes per second: stek's callback against OpenSSL's built-in key.

Both servers are the same Python ``ssl`` context setup in the same process and
the same run; one has ``stek.install()``, the other keeps OpenSSL's built-in
ticket key.  Client and server talk through memory BIOs (no sockets, no
scheduler noise), and only the *server's* handshake time is counted, as CPU
time of this thread (so other processes on the machine do not skew it), so
the callback's cost is not diluted by the client's.  Rounds alternate between the
two servers; the ratio is the median over rounds.

    python bench/bench_resumption.py [--rounds 15] [--handshakes 400]
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import stek
from stek.stores.memory import MemoryStore


def make_certs(d: Path) -> tuple[Path, Path]:
    import subprocess

    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              session: ssl.SSLSession | None) -> tuple[float, ssl.SSLSession | None, bool]:
    """One handshake over memory BIOs; returns (server seconds, client session, reused)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    server_time = 0.0
    c_done = s_done = False
    while not (c_done and s_done):
        if not c_done:
            try:
                client.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            t = time.thread_time()
            try:
                server.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            server_time += time.thread_time() - t
        c_in.write(s_out.read())
    # Let the client read NewSessionTicket messages (TLS 1.3 sends them after).
    t = time.thread_time()
    server.write(b"x")
    server_time += time.thread_time() - t
    c_in.write(s_out.read())
    client.read(1)
    return server_time, client.session, client.session_reused


def rate(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, n: int) -> float:
    _, session, _ = handshake(server_ctx, client_ctx, None)
    total = 0.0
    for _ in range(n):
        t, session, reused = handshake(server_ctx, client_ctx, session)
        if not reused:
            raise SystemExit("benchmark error: a handshake did not resume")
        total += t
    return n / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--handshakes", type=int, default=400)
    ap.add_argument("--callback", choices=("c", "python"), default="c",
                    help="stek's compiled callback (default) or its pure-Python ctypes one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_certs(Path(d))
        store = MemoryStore()
        stek.init_ring(store, stek.Policy())
        results = {}
        for label, version in (("TLS 1.2", ssl.TLSVersion.TLSv1_2),
                               ("TLS 1.3", ssl.TLSVersion.TLSv1_3)):
            builtin = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            builtin.load_cert_chain(cert, key)
            with_stek = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with_stek.load_cert_chain(cert, key)
            handle = stek.install(with_stek, store, accelerate=args.callback == "c")
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.load_verify_locations(cert)
            client.minimum_version = client.maximum_version = version
            rate(builtin, client, 50)  # warm up both paths
            rate(with_stek, client, 50)
            ratios, b_rates, s_rates = [], [], []
            for i in range(args.rounds):
                order = (builtin, with_stek) if i % 2 == 0 else (with_stek, builtin)
                got = {id(ctx): rate(ctx, client, args.handshakes) for ctx in order}
                b, s = got[id(builtin)], got[id(with_stek)]
                b_rates.append(b)
                s_rates.append(s)
                ratios.append(s / b)
            c = handle.counters
            assert c.resumed >= args.rounds * args.handshakes and c.errors == 0
            results[label] = {
                "builtin_per_s": round(statistics.median(b_rates)),
                "stek_per_s": round(statistics.median(s_rates)),
                "ratio_median": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"OpenSSL {ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}")
    print(f"server-side resumed handshakes/s (median of rounds), {args.callback} callback")
    for label, r in results.items():
        print(f"  {label}: built-in {r['builtin_per_s']:>6}/s  stek {r['stek_per_s']:>6}/s  "
              f"ratio {r['ratio_median']:.3f} (min {r['ratio_min']:.3f}, max {r['ratio_max']:.3f})")


if __name__ == "__main__":
    main()
