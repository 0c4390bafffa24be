"""A new user's first run, as README.md writes it: the set-up's ``stek agent``, then the
quickstart block, then the server snippet with its certificate command."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.ports import free_port
from helpers.tls_peers import s_client, s_client_reused
from integration.test_agent_process import agent, stop, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def env_for(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEK_")}
    env["STEK_STORE"] = f"file:{tmp_path / 'ring.json'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_quickstart_runs_as_written_after_the_set_up(tmp_path: Path) -> None:
    setup = blocks(section("Set-up: two commands"), "sh")[0]
    assert setup.strip().endswith("&& stek agent")
    quick = blocks(section("Quickstart"), "sh")[0]
    assert quick.lstrip().startswith("stek init")
    env = env_for(tmp_path)
    log = tmp_path / "agent.log"
    # The set-up's agent (its metrics on a free port: other tests may hold the default).
    cmd = [sys.executable, "-m", "stek.cli", "agent", "--metrics-addr",
           f"127.0.0.1:{free_port()}"]
    with agent(cmd, log, env) as proc:
        wait_for("the agent's ring", lambda: "initialized keyring" in log.read_text())
        r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + quick], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
        stop(proc)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already exists" in r.stdout and "unchanged" in r.stdout, r.stdout
    text = log.read_text()
    # The first screen says what to do next.
    assert f"next: point servers at file:{tmp_path / 'ring.json'}" in text, text
    assert "--export FORMAT:PATH" in text and "docs/exporters.md" in text


def test_init_with_another_policy_still_refuses(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    run = [sys.executable, "-m", "stek.cli", "init"]
    assert subprocess.run(run, env=env, capture_output=True, timeout=60).returncode == 0
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "unchanged" in again.stdout
    other = subprocess.run([*run, "--accept-for", "5h"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 2 and "already exists" in other.stderr


@pytest.mark.servers
def test_the_readme_server_resumes_with_the_readme_certificate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quick = section("Quickstart")
    cert_cmd = next(b for b in blocks(quick, "sh") if "openssl req" in b)
    server = blocks(quick, "python")[0]
    port = free_port()
    assert '("127.0.0.1", 8443)' in server
    (tmp_path / "server.py").write_text(server.replace("8443", str(port)))
    env = env_for(tmp_path)
    made = subprocess.run(["bash", "-c", cert_cmd], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert subprocess.run([sys.executable, "-m", "stek.cli", "init"], env=env,
                          capture_output=True, timeout=60).returncode == 0
    log = tmp_path / "server.log"
    monkeypatch.chdir(tmp_path)  # the snippet reads cert.pem and key.pem from its directory
    with agent([sys.executable, str(tmp_path / "server.py")], log, env) as proc:
        deadline = time.monotonic() + 30
        while True:
            out = s_client(port, ssl.TLSVersion.TLSv1_3, tmp_path,
                           sess_out=tmp_path / "s.pem")
            if "CONNECTED" in out and (tmp_path / "s.pem").exists():
                break
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        assert not s_client_reused(out), out
        again = s_client(port, ssl.TLSVersion.TLSv1_3, tmp_path,
                         sess_in=tmp_path / "s.pem")
        assert s_client_reused(again), again
        wait_for("the counters", lambda: "resumed=1" in log.read_text())
        stop(proc)
    assert re.search(r"issued=[12],", log.read_text())
