"""The real agent: reload commands' environment is scrubbed of every secret stek holds,
by value, and a reload's huge output costs the agent no memory."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest

from integration.test_agent_process import PasswordRedis, agent, stop, wait_for


@pytest.mark.servers
def test_secret_copies_in_any_variable_never_reach_a_reload(tmp_path: Path,
                                                           kek_file: Path) -> None:
    """password_file= in the URL: $REDISCLI_AUTH (a copy of the password) and a variable
    holding a copy of the KEK, in any encoding, are scrubbed, whatever their names."""
    kek_b64 = kek_file.read_text().splitlines()[-1].strip()
    kek = base64.b64decode(kek_b64)
    pw_file = tmp_path / "redis.pw"
    pw_file.write_text(PasswordRedis.PASSWORD + "\n")
    pw_file.chmod(0o600)
    dump = tmp_path / "env"
    with PasswordRedis(tmp_path / "redis") as redis:
        url = f"redis://127.0.0.1:{redis.port}/0?prefix=stektest&password_file={pw_file}"
        env = {"REDISCLI_AUTH": PasswordRedis.PASSWORD, "MY_KEK_COPY": kek_b64,
               "KEK_HEX": kek.hex(), "MIXED": f"x={PasswordRedis.PASSWORD};y",
               "HARMLESS": "kept"}
        log = tmp_path / "agent.log"
        cmd = [sys.executable, "-m", "stek.cli", "agent", "--no-metrics", "--store", url,
               "--kek-file", str(kek_file),
               "--export", f"openssl:{tmp_path / 'keys'}", "--reload", f"env > {dump}"]
        with agent(cmd, log, env) as proc:
            wait_for("the reload", lambda: dump.exists() and "HARMLESS" in dump.read_text())
            stop(proc)
        assert proc.returncode == 0, log.read_text()
    seen = dump.read_text()
    names = {line.split("=", 1)[0] for line in seen.splitlines() if "=" in line}
    assert not {"REDISCLI_AUTH", "MY_KEK_COPY", "KEK_HEX", "MIXED"} & names, names
    assert PasswordRedis.PASSWORD not in seen and kek_b64 not in seen and kek.hex() not in seen
    assert "HARMLESS=kept" in seen


def _peak_rss_kib(pid: int) -> int:
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert m
    return int(m.group(1))


def test_a_reload_printing_hundreds_of_megabytes_keeps_a_small_tail(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    # 300 MB of output, then a recognisable last line; the reload fails so its tail is logged.
    reload = "head -c 300000000 /dev/zero | tr '\\0' x; echo; echo last-words; exit 3"
    cmd = [sys.executable, "-m", "stek.cli", "agent", "--no-metrics",
           "--store", f"file:{tmp_path / 'ring.json'}",
           "--export", f"openssl:{tmp_path / 'keys'}", "--reload", reload]
    with agent(cmd, log) as proc:
        wait_for("the failed reload", lambda: b"exited 3" in log.read_bytes(), timeout=120)
        peak = _peak_rss_kib(proc.pid)
        stop(proc)
    text = log.read_text()
    assert "last-words" in text
    # The agent alone is a few tens of MiB; reading the output whole made it 300 MiB more.
    assert peak < 150 * 1024, f"agent peak RSS {peak} KiB"
