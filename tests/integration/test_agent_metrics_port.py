"""The real agent refuses to run when another program holds its metrics port: that
program would answer /healthz for it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from stek.agent import DEFAULT_METRICS_ADDR

#: An HTTP server answering 200 to everything: a squatter on the agent's port.
SQUATTER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok\\n")
    def log_message(self, *a): pass
s = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("listening", flush=True)
s.serve_forever()
"""


@contextlib.contextmanager
def squatter(host: str, port: int) -> Iterator[None]:
    """Another local user (nobody) listening on host:port."""
    proc = subprocess.Popen(["/usr/bin/python3", "-c", SQUATTER, host, str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, user="nobody",
                            cwd="/")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if b"listening" not in line:  # the port was already held by something else: fine
            assert proc.wait(10) != 0
        else:
            with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=10) as r:
                assert r.status == 200
        yield
    finally:
        proc.kill()
        proc.wait(10)


def stek_agent(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEK_")}
    return subprocess.run([sys.executable, "-m", "stek.cli", "agent", "--store",
                           f"file:{tmp_path / 'ring.json'}", *args],
                          capture_output=True, text=True, env=env, timeout=30)


def test_default_metrics_port_held_by_another_user_is_refused(tmp_path: Path) -> None:
    host, port = DEFAULT_METRICS_ADDR.rsplit(":", 1)
    with squatter(host, int(port)):
        r = stek_agent(tmp_path)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("stek: error: cannot serve metrics on 127.0.0.1:9477"), r.stderr
    assert "--no-metrics" in last and "Traceback" not in r.stderr
    assert "running without /metrics" not in r.stderr
    assert not (tmp_path / "ring.json").exists()  # nothing was done
