"""The real ``stek agent`` process: reload commands' process groups and environment,
permanent store errors, the bounded /metrics server and its loopback rule."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.ports import free_port
from helpers.store_servers import EtcdServer, RedisServer
from stek.errors import SealingError, StoreCorrupt, StoreUnavailable
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import FileStore

#: Writes the shell's pid and its background child's pid to PIDS, then hangs.
HANG = 'echo $$ >> {pids}; sleep 300 & echo $! >> {pids}; wait'
#: The same, deaf to SIGTERM (shell and child): only the SIGKILL after the grace ends it.
HANG_DEAF = "trap '' TERM; " + HANG
#: "Stops within a few seconds of SIGTERM": the kill grace (2 s, stek._command)
#: plus generous slack for a loaded machine; a reload left hanging would hold
#: the agent for its --reload-timeout (10 minutes here).
PROMPT_STOP = 8.0


def agent_cmd(store: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "stek.cli", "agent", "--store", store, *args]


@contextlib.contextmanager
def agent(cmd: list[str], log: Path, env: dict[str, str] | None = None,
          ) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for(what: str, cond: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not callable(cond) or not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """A live process (a zombie counts as gone: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_of(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM; seconds it took to exit (a hang fails at the wait's timeout)."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return time.monotonic() - start


def test_reload_timeout_kills_the_whole_group_and_sigterm_stops_at_once(
        tmp_path: Path) -> None:
    """Each timed-out reload's shell and its sleeping child die; SIGTERM is prompt."""
    pids = tmp_path / "pids"
    log = tmp_path / "agent.log"
    cmd = agent_cmd(f"file:{tmp_path / 'ring.json'}", "--no-metrics", "--interval", "1s",
                    "--export", f"openssl:{tmp_path / 'keys'}",
                    "--reload", HANG.format(pids=pids), "--reload-timeout", "1s")
    with agent(cmd, log) as proc:
        # The first reload and its retry both time out.
        wait_for("two timed-out reloads",
                 lambda: log.read_text().count("timed out after 1s") >= 2)
        wait_for("the reloads' processes to be killed",
                 lambda: len(pids_of(pids)) >= 4 and not any(map(alive, pids_of(pids)[:4])),
                 timeout=10)
        took = stop(proc)
        assert proc.returncode == 0, log.read_text()
        assert took < PROMPT_STOP, f"stopped {took:.1f}s after SIGTERM"
    assert not any(map(alive, pids_of(pids))), log.read_text()


@pytest.mark.parametrize("reload", [HANG, HANG_DEAF], ids=["obeys-sigterm", "ignores-sigterm"])
def test_sigterm_during_a_hanging_reload_kills_its_group(tmp_path: Path, reload: str) -> None:
    """--reload-timeout 10m, yet SIGTERM ends the agent and the reload's group within
    a few seconds: at once if the reload obeys SIGTERM, after the kill grace if not."""
    pids = tmp_path / "pids"
    log = tmp_path / "agent.log"
    cmd = agent_cmd(f"file:{tmp_path / 'ring.json'}", "--no-metrics",
                    "--export", f"openssl:{tmp_path / 'keys'}",
                    "--reload", reload.format(pids=pids), "--reload-timeout", "10m")
    with agent(cmd, log) as proc:
        wait_for("the reload to start its child", lambda: len(pids_of(pids)) == 2)
        assert all(map(alive, pids_of(pids)))
        took = stop(proc)
        assert proc.returncode == 0, log.read_text()
        assert took < PROMPT_STOP, f"stopped {took:.1f}s after SIGTERM"
        assert "stek agent stopped" in log.read_text()
    assert not any(map(alive, pids_of(pids)))


#: An agent whose main thread holds the lock of ``stop_event`` (as it does for a
#: few bytecodes inside every ``Event.wait()``) when SIGNAL arrives.
_SIGNAL_UNDER_LOCK = """
import logging, os, signal, sys, time
from stek.agent import Agent
logging.basicConfig(level=logging.INFO)
from stek.stores import MemoryStore
a = Agent(MemoryStore())
a.install_signal_handlers()
with a.stop_event._cond:
    os.kill(os.getpid(), signal.{signal})
    for _ in range(10000):
        pass  # a Python-level handler runs between these bytecodes
    time.sleep(0.2)
print("stopped" if a.stop_event.wait(10) else "not stopped", flush=True)
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_stop_signal_arriving_while_the_main_thread_holds_the_event_lock(
        signame: str) -> None:
    """The CI hang: SIGTERM landed while the main thread, waiting on a reload,
    was inside ``stop_event.wait()``; a handler calling ``stop_event.set()``
    then waits for a lock its own thread holds, forever."""
    try:
        out = subprocess.run([sys.executable, "-c", _SIGNAL_UNDER_LOCK.format(signal=signame)],
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{signame} under the event's lock hung the agent")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stopped", out.stderr
    assert f"received {signame}, stopping" in out.stderr


class PasswordRedis(RedisServer):
    PASSWORD = "pw-s3cret-4-redis"

    def _cmd(self) -> list[str]:
        return [*super()._cmd(), "--requirepass", self.PASSWORD]

    def _ready(self) -> None:
        pass  # PING needs AUTH; the port answering is enough

    @property
    def url(self) -> str:
        return f"redis://:{self.PASSWORD}@127.0.0.1:{self.port}/0?prefix=stektest"


@pytest.mark.servers
def test_reload_commands_do_not_inherit_the_agents_secrets(tmp_path: Path,
                                                          kek_file: Path) -> None:
    """STEK_KEK, STEK_KEK_FILE, the store URL and its password stay in the agent."""
    kek = kek_file.read_text().strip()
    dump = tmp_path / "env"
    with PasswordRedis(tmp_path / "redis") as redis:
        env = {"STEK_STORE": redis.url, "STEK_KEK": kek, "STEK_KEK_FILE": str(kek_file),
               "REDIS_PW": PasswordRedis.PASSWORD, "STEK_HARMLESS": "kept"}
        log = tmp_path / "agent.log"
        cmd = [sys.executable, "-m", "stek.cli", "agent", "--no-metrics",
               "--export", f"openssl:{tmp_path / 'keys'}", "--reload", f"env > {dump}"]
        with agent(cmd, log, env) as proc:
            wait_for("the reload", lambda: dump.exists() and "STEK_HARMLESS" in
                     dump.read_text())
            stop(proc)
        assert proc.returncode == 0, log.read_text()
    seen = dump.read_text()
    names = {line.split("=", 1)[0] for line in seen.splitlines() if "=" in line}
    assert not {"STEK_KEK", "STEK_KEK_FILE", "STEK_STORE", "REDIS_PW"} & names, names
    assert PasswordRedis.PASSWORD not in seen and kek not in seen
    assert "STEK_HARMLESS=kept" in seen and "PATH" in names
    assert PasswordRedis.PASSWORD not in log.read_text()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)", status, re.M)
    assert match
    return int(match.group(1))


def test_metrics_server_stays_bounded_under_idle_connections(tmp_path: Path) -> None:
    """300 idle connections: the agent's threads stay few, /metrics still answers,
    and /healthz shows the reload's status, never its output."""
    port = free_port()
    log = tmp_path / "agent.log"
    cmd = agent_cmd(f"file:{tmp_path / 'ring.json'}", "--metrics-addr", f"127.0.0.1:{port}",
                    "--export", f"openssl:{tmp_path / 'keys'}",
                    "--reload", "echo reload-output-not-for-healthz >&2; exit 3")
    idle: list[socket.socket] = []
    with agent(cmd, log) as proc:
        wait_for("/metrics", lambda: b"exited 3" in log.read_bytes() and
                 "serving /metrics" in log.read_text())
        before = threads_of(proc.pid)
        try:
            for _ in range(300):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            for s in idle[:50]:
                s.sendall(b"GET /metr")  # half a request, never finished
            code, text = http_get(port, "/metrics")
            assert code == 200 and "stek_rotations_total" in text
            during = threads_of(proc.pid)
            code, health = http_get(port, "/healthz")
        finally:
            for s in idle:
                s.close()
        assert during <= before + 1, (before, during)
        assert code == 503 and "exited 3" in health
        assert "reload-output-not-for-healthz" not in health
        assert "reload-output-not-for-healthz" in log.read_text(), "the log keeps it"
        stop(proc)


def test_non_loopback_metrics_address_is_refused_before_binding(tmp_path: Path) -> None:
    """0.0.0.0 without --metrics-public: one line, exit 2, before the store is opened."""
    port = free_port()
    # An unusable store: whatever runs first must fail before anything binds.
    r = subprocess.run(agent_cmd("ftp://nowhere/x", "--metrics-addr", f"0.0.0.0:{port}"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--metrics-public" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_permanent_store_error_is_said_once_and_targets_keep_their_keys(
        tmp_path: Path) -> None:
    """A corrupt ring: one ERROR saying it is permanent, /healthz fails, the export stays;
    once repaired, the agent carries on."""
    path = tmp_path / "ring.json"
    init_ring(FileStore(path), Policy())
    good = path.read_bytes()
    keys = tmp_path / "keys"
    port = free_port()
    log = tmp_path / "agent.log"
    cmd = agent_cmd(f"file:{path}", "--metrics-addr", f"127.0.0.1:{port}",
                    "--interval", "1s", "--export", f"openssl:{keys}")
    with agent(cmd, log) as proc:
        wait_for("the export", lambda: keys.exists() and "serving /metrics" in
                 log.read_text())
        exported = keys.read_bytes()
        path.write_text("not a keyring")
        wait_for("the error", lambda: "permanent" in log.read_text())
        # Three more failed passes, each woken by the file's change notification
        # (the same bad contents, put in place whole): a transient error would be
        # logged again at every one.
        for _ in range(3):
            failures = _store_failures(port)
            tmp = path.with_name("ring.json.new")
            tmp.write_text("not a keyring")
            os.replace(tmp, path)
            wait_for("another failed pass", lambda f=failures: _store_failures(port) > f)
        text = log.read_text()
        assert text.count("not a stek keyring") == 1, text
        line = next(x for x in text.splitlines() if "not a stek keyring" in x)
        assert " ERROR " in line and "permanent" in line
        assert line.count(str(path)) == 1, line  # the store is named once
        code, health = http_get(port, "/healthz")
        assert code == 503 and "permanent" in health
        assert health.count(str(path)) == 1, health
        assert keys.read_bytes() == exported
        path.write_bytes(good)  # the file store's change notification wakes the agent
        wait_for("recovery", lambda: http_get(port, "/healthz")[0] == 200, timeout=40)
        stop(proc)
        assert proc.returncode == 0


def test_which_store_errors_are_permanent() -> None:
    from stek.agent import is_permanent

    def caused(exc: Exception, cause: BaseException) -> Exception:
        exc.__cause__ = cause
        return exc

    assert is_permanent(StoreCorrupt("x"))
    assert is_permanent(SealingError("wrong KEK"))
    assert is_permanent(caused(StoreUnavailable("x"), PermissionError(13, "denied")))
    assert not is_permanent(caused(StoreUnavailable("x"), ConnectionRefusedError()))
    assert not is_permanent(StoreUnavailable("lock held"))



def _store_failures(port: int) -> float:
    _, text = http_get(port, "/metrics")
    match = re.search(r"^stek_store_failures_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.servers
def test_wrong_kek_on_a_sealed_redis_ring_is_permanent_and_targets_keep_their_keys(
        tmp_path: Path, kek_file: Path) -> None:
    """A real agent on a real sealed Redis ring: with the right KEK it exports; restarted
    with a wrong one, it logs one ERROR saying the error is permanent (not again when a
    write to the ring wakes it and it fails again), /healthz fails with "(permanent)",
    and the export target keeps the keys it had."""
    from stek.keyring import Keyring
    from stek.stores import open_store
    from stek.stores.sealing import write_kek_file

    wrong = tmp_path / "wrong.kek"
    write_kek_file(wrong)
    keys = tmp_path / "keys"
    port = free_port()
    with RedisServer(tmp_path / "redis") as redis:
        cmd = agent_cmd(redis.url, "--metrics-addr", f"127.0.0.1:{port}",
                        "--export", f"openssl:{keys}")
        log = tmp_path / "agent-right.log"
        with agent(cmd, log, {"STEK_KEK_FILE": str(kek_file)}) as proc:
            wait_for("the export", lambda: keys.exists() and "serving /metrics" in
                     log.read_text())
            stop(proc)
        exported = keys.read_bytes()

        log = tmp_path / "agent-wrong.log"
        with agent(cmd, log, {"STEK_KEK_FILE": str(wrong)}) as proc:
            wait_for("the error", lambda: "permanent" in log.read_text() and
                     "serving /metrics" in log.read_text())
            # Its first pass failed, and so did the one its subscription's wake-up ran
            # once subscribed (stores/shared.py, WatchThread.ready): the only wake
            # left is the write below (a permanent error retries after 30 s).
            wait_for("the subscription's pass", lambda: _store_failures(port) >= 2)
            failures = _store_failures(port)
            assert failures >= 1
            # A write under the right KEK: the change notification wakes the agent,
            # which reads again and fails the same way.
            store = open_store(redis.url, kek_file=str(kek_file))
            store.update(lambda r: Keyring(r.policy, r.keys, r.generation + 1) if r else None)
            wait_for("another failure", lambda: _store_failures(port) > failures)
            code, health = http_get(port, "/healthz")
            stop(proc)
        assert proc.returncode == 0
    text = log.read_text()
    errors = [line for line in text.splitlines() if "wrong key-encryption key" in line]
    assert len(errors) == 1, text
    assert " ERROR " in errors[0] and "this is permanent" in errors[0]
    assert errors[0].count(redis.url) == 1 and health.count(redis.url) == 1, (errors, health)
    assert code == 503 and "(permanent)" in health and "wrong key-encryption key" in health
    assert keys.read_bytes() == exported
    assert wrong.read_text().strip() not in text and kek_file.read_text().strip() not in text


@pytest.mark.servers
def test_store_errors_name_the_store_once(tmp_path: Path, kek_file: Path) -> None:
    """A real etcd that goes away: each retry's WARNING and /healthz name the store's
    URL once ("store URL: cannot read ...", not "store URL: URL: cannot read ...")."""
    port = free_port()
    log = tmp_path / "agent.log"
    with EtcdServer(tmp_path / "etcd") as etcd:
        url = etcd.url
        cmd = agent_cmd(url, "--metrics-addr", f"127.0.0.1:{port}")
        with agent(cmd, log, {"STEK_KEK_FILE": str(kek_file)}) as proc:
            wait_for("the ring", lambda: "keyring generation 1" in log.read_text() and
                     "serving /metrics" in log.read_text())
            etcd.kill()
            wait_for("two retries", lambda: log.read_text().count("cannot read") >= 2)
            code, health = http_get(port, "/healthz")
            stop(proc)
    lines = [x for x in log.read_text().splitlines() if "stek.agent: store " in x]
    assert len(lines) >= 2, log.read_text()
    for line in lines:
        assert line.count(url) == 1, line
    assert lines[0].split(" stek.agent: ")[1].startswith(f"store {url}: cannot read")
    assert code == 503 and health.count(url) == 1, health
    assert f"store {url}: cannot read" in health
