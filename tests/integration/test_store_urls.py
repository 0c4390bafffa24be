"""One URL grammar for every store: what is accepted, what is refused, and what is shown.

Secrets (passwords, tokens) never appear in a store's ``url``, its repr, or
any error, whatever the URL looked like; URLs that would mean something
other than what they say are refused with one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers.ports import free_port
from helpers.programs import find_program
from helpers.secret_files import SECRET, secret_file
from helpers.store_servers import RedisServer, child_env
from stek import StekError, open_store
from stek.stores.redis import RedisStore

pytestmark = pytest.mark.usefixtures("no_kek_env")


@pytest.mark.servers
def test_unix_socket_url_reaches_a_live_redis(tmp_path: Path, kek_file: Path) -> None:
    """The documented unix:// URL works against a redis-server listening on a socket."""
    sock = Path(f"/tmp/stek-{os.getpid()}-{free_port()}.sock")
    proc = subprocess.Popen([find_program("redis-server"), "--port", "0", "--unixsocket",
                             str(sock), "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            proc.wait(0.05) if proc.poll() is not None else __import__("time").sleep(0.05)
        store = open_store(f"unix://{sock}?db=2&prefix=u", kek_file=str(kek_file))
        from stek import Policy, init_ring

        ring = init_ring(store, Policy()).ring
        assert store.read().keys == ring.keys
        assert isinstance(store, RedisStore) and store.identity == "redis:2/u"
        with pytest.raises(StekError, match="must be a number"):
            open_store(f"unix://{sock}?db=x", kek_file=str(kek_file))
    finally:
        proc.kill()
        proc.wait(10)
        sock.unlink(missing_ok=True)


def _all_command_lines() -> dict[int, str]:
    """Every process's arguments, as ps(1) reads them (/proc/PID/cmdline, proc(5))."""
    lines: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):  # gone since, or not ours to read
                lines[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
    return lines


@pytest.mark.servers
def test_child_process_list_holds_no_password(tmp_path: Path, kek_file: Path) -> None:
    """A running agent (and the reload it started) on a password-protected Redis,
    reached with password_file=: the process list names the file, never the secret."""
    pw = secret_file(tmp_path)
    pids = tmp_path / "pids"
    with RedisServer(tmp_path / "redis") as server:
        import redis

        # Set at run time, so that redis-server's own arguments hold no password either.
        redis.Redis(host="127.0.0.1", port=server.port).config_set("requirepass", SECRET)
        url = f"redis://127.0.0.1:{server.port}/0?prefix=ps&password_file={pw}"
        log = tmp_path / "agent.log"
        with open(log, "wb") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "stek", "agent", "--store", url, "--no-metrics",
                 "--export", f"openssl:{tmp_path / 'keys'}",
                 "--reload", f"echo $$ > {pids}; exec sleep 60"],
                env=child_env(STEK_KEK_FILE=str(kek_file)), stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not (pids.exists() and pids.read_text().strip()):
                assert agent.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            reload_pid = int(pids.read_text())
            seen = _all_command_lines()
            # Both are in the list looked at, and the agent did log in with the secret.
            assert f"password_file={pw}" in seen[agent.pid]
            assert "sleep 60" in seen[reload_pid]
            c = redis.Redis(host="127.0.0.1", port=server.port, password=SECRET)
            assert c.exists("ps:keyring")
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(30)
    for secret in (SECRET, quote(SECRET, safe="")):
        assert not [(pid, line) for pid, line in seen.items() if secret in line]
    assert SECRET not in log.read_text()
