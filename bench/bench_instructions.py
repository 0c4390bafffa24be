"""Instructions per resumed handshake: stek's callback against OpenSSL's built-in key.

A deterministic companion to ``bench_resumption.py``, whose timings move with
the machine.  The *server's serving thread* runs under ``valgrind --tool=callgrind`` (which
counts instructions, the same count on every run), in its own process, and
serves resumed handshakes over loopback to a client running at native speed.
Each variant (built-in key, stek's compiled callback, the same serving a key
scope, stek's Python callback) is
run with two numbers of handshakes; the difference divided by the number of
extra handshakes is the server's cost of one resumed handshake, start-up
excluded.  The ratio built-in / stek is then handshakes per instruction, stek
relative to OpenSSL's built-in key.

    python bench/bench_instructions.py [--tls 1.2 1.3] [--n1 20] [--n2 120] [--variants ...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("builtin", "stek-c", "stek-c-scoped", "stek-python")


def serve(variant: str, version: str, count: int, port_file: Path, cert: Path,
          key: Path, ring: Path) -> None:
    """The server process: ``count`` + 1 connections, then exit (flushing callgrind)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if variant != "builtin":
        import stek

        stek.install(ctx, f"file:{ring}", accelerate=variant.startswith("stek-c"),
                     scope="bench" if variant.endswith("-scoped") else None)
    srv = socket.create_server(("127.0.0.1", 0))
    port_file.write_text(str(srv.getsockname()[1]))
    for _ in range(count + 1):
        conn, _ = srv.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(16)
            tls.sendall(b"ok\n")
    srv.close()


def client(port: int, version: str, cert: Path, count: int) -> None:
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cert)
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    cctx.minimum_version = cctx.maximum_version = v
    session = None
    for i in range(count + 1):
        with socket.create_connection(("127.0.0.1", port), timeout=120) as raw, \
                cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"hi\n")
            tls.recv(16)
            if i and not tls.session_reused:
                raise SystemExit("benchmark error: a handshake did not resume")
            session = tls.session


def instructions(variant: str, version: str, count: int, d: Path, cert: Path, key: Path,
                 ring: Path) -> int:
    out = d / f"cg.{variant}.{version}.{count}"
    port_file = d / f"port.{variant}.{version}.{count}"
    proc = subprocess.Popen(
        # One profile per thread: only the serving (main) thread is counted,
        # not stek's refresher, whose work depends on wall time (which
        # valgrind stretches), not on handshakes.
        ["valgrind", "--tool=callgrind", "--separate-threads=yes",
         f"--callgrind-out-file={out}",
         sys.executable, __file__, "--serve", variant, "--tls", version, "--count",
         str(count), "--port-file", str(port_file), "--cert", str(cert), "--key", str(key),
         "--ring", str(ring)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.time() + 600
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit(f"server failed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    client(int(port_file.read_text()), version, cert, count)
    proc.wait(timeout=600)
    main_thread = Path(f"{out}-01")
    m = re.search(r"^summary:\s+(\d+)", main_thread.read_text(), re.M)
    if not m:
        raise SystemExit(f"no callgrind summary in {main_thread}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tls", nargs="+", default=["1.2", "1.3"], choices=["1.2", "1.3"])
    ap.add_argument("--n1", type=int, default=20)
    ap.add_argument("--n2", type=int, default=120)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="builtin is always measured: the others are relative to it")
    ap.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cert", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ring", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.tls[0], args.count, args.port_file, args.cert, args.key,
              args.ring)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_resumption import make_certs

    import stek

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cert, key = make_certs(d)
        ring = d / "ring.json"
        stek.init_ring(stek.open_store(f"file:{ring}"), stek.Policy())
        print(f"OpenSSL {ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}; server "
              f"instructions per resumed handshake ({args.n2}-{args.n1} handshakes)")
        for version in args.tls:
            per = {}
            for variant in dict.fromkeys(["builtin", *args.variants]):
                i1 = instructions(variant, version, args.n1, d, cert, key, ring)
                i2 = instructions(variant, version, args.n2, d, cert, key, ring)
                per[variant] = (i2 - i1) / (args.n2 - args.n1)
            base = per["builtin"]
            line = "  ".join(f"{v} {per[v]:,.0f} ({base / per[v]:.3f})" for v in per)
            print(f"  TLS {version}: {line}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
