"""The binding proof's cost: once per process, at the first ``stek.install()``.

Each round is a fresh interpreter that imports stek, then times
``stek.hazmat.proof.binding()`` (wall clock and the process's CPU time).
``cold``: the program has not imported ``cryptography.x509`` yet, so the
proof pays that import (to make its ephemeral certificate); ``warm``: it
has (as a server that loads certificates with cryptography has).

    python bench/bench_proof.py [--rounds 11]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
import stek
from stek.hazmat.libssl import libssl
from stek.hazmat.proof import binding
lib = libssl()
if sys.argv[1] == "warm":
    import cryptography.x509
wall, cpu = time.perf_counter(), time.process_time()
proven = binding(lib)
print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "applied_to": proven.applied_to}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}; {args.rounds} fresh processes each (ms)")
    for mode in ("cold", "warm"):
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, mode], check=True,
                                          capture_output=True, text=True).stdout)
                for _ in range(args.rounds)]
        for what in ("cpu", "wall"):
            xs = sorted(r[what] * 1e3 for r in runs)
            print(f"  {mode:4} {what:4}: median {statistics.median(xs):6.1f}  "
                  f"min {xs[0]:6.1f}  max {xs[-1]:6.1f}")
        print(f"  (_ssl applies its session id context per {runs[0]['applied_to']})")


if __name__ == "__main__":
    main()
