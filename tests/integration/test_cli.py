"""The stek command line: init, rotate, status, errors (run as a real process)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.waiting import wait_until
from stek.cli import main
from stek.keyring import Keyring
from stek.stores import FileStore


def stek(*args: str, env: dict[str, str] | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("STEK_STORE", None) if env is None or "STEK_STORE" not in env else None
    return subprocess.run([sys.executable, "-m", "stek.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def stek_main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``stek ARGS`` through stek.cli.main, what the console script runs: the exit status,
    stdout and stderr of ``python -m stek.cli`` (compared for these cases), without
    starting a Python each time."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as env:
        env.delenv("STEK_STORE", raising=False)  # as stek() does
        returncode = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["stek", *args], returncode, out.out, out.err)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file:{tmp_path / 'ring.json'}"


def test_init_creates_a_ring_with_policy(url: str) -> None:
    r = stek("init", "--store", url, "--rotate-every", "30m", "--accept-for", "2h",
             "--publish-ahead", "5m")
    assert r.returncode == 0, r.stderr
    assert "created keyring" in r.stdout
    ring = FileStore(url[5:]).read()
    assert ring.policy.to_dict() == {"rotate_every": 1800, "accept_for": 7200,
                                     "publish_ahead": 300, "key_size": 80}


def test_init_twice_is_a_one_line_error(url: str) -> None:
    """With another policy; with the same one it is a no-op (test_first_run.py)."""
    assert stek("init", "--store", url).returncode == 0
    r = stek("init", "--store", url, "--accept-for", "5h")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "already exists" in r.stderr and "Traceback" not in r.stderr


def test_init_force_changes_policy_and_keeps_keys(url: str) -> None:
    stek("init", "--store", url)
    before = {k.name for k in FileStore(url[5:]).read()}
    r = stek("init", "--store", url, "--force", "--accept-for", "5h")
    assert r.returncode == 0, r.stderr
    ring = FileStore(url[5:]).read()
    assert ring.policy.accept_for == 5 * 3600
    assert before <= {k.name for k in ring}


def test_init_warns_for_48_byte_keys(url: str) -> None:
    r = stek("init", "--store", url, "--key-size", "48")
    assert r.returncode == 0
    assert "128 bits" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["init", "--rotate-every", "5x"], "invalid duration"),
        (["init", "--rotate-every", "0s"], "rotate_every must be a positive"),
        (["init", "--rotate-every", "7d", "--accept-for", "1d"], "7d"),
        (["status", "--store", "ftp://host/x"], "unknown store URL"),
        (["frobnicate"], "No such command"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(url: str, args: list[str],
                                                message: str) -> None:
    if "--store" not in args:
        args = [*args, "--store", url]
    r = stek(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_status_of_missing_ring_says_run_init(url: str) -> None:
    r = stek("status", "--store", url)
    assert r.returncode == 1, "an operational error, not a usage mistake"
    assert "stek init" in r.stderr


def test_corrupt_ring_is_one_line_and_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_text("definitely not json")
    for cmd in ("status", "rotate"):
        r = stek(cmd, "--store", f"file:{path}")
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1
        assert "not a stek keyring" in r.stderr and "Traceback" not in r.stderr
    assert path.read_text() == "definitely not json"


def test_rotate_is_idempotent(url: str) -> None:
    stek("init", "--store", url)
    r = stek("rotate", "--store", url)
    assert r.returncode == 0
    assert "nothing to do" in r.stdout


def test_status_json_shape_and_no_key_bytes(url: str) -> None:
    stek("init", "--store", url)
    r = stek("status", "--json", "--store", url)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ring = FileStore(url[5:]).read()
    assert [k["name"] for k in doc["keys"]] == [k.name.hex() for k in ring]
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    for k in doc["keys"]:
        assert k["state"] in {"pending", "active", "decrypt-only", "expired"}
        assert all(iso.match(k[f]) for f in ("activates_at", "retires_at", "expires_at"))
    assert "active" in {k["state"] for k in doc["keys"]}
    for k in ring:
        for secret in (k.aes_key, k.hmac_key):
            assert secret.hex() not in r.stdout
            import base64

            assert base64.b64encode(secret).decode() not in r.stdout


def test_status_text_shows_states_and_timeline(url: str) -> None:
    stek("init", "--store", url)
    r = stek("status", "--store", url)
    assert r.returncode == 0
    name = next(iter(FileStore(url[5:]).read())).name.hex()
    assert name in r.stdout and "active" in r.stdout
    assert re.search(r"\[[ #\-.|]+\]", r.stdout), r.stdout


def test_status_lists_revoked_names_until_their_time(url: str) -> None:
    """``stek revoke NAME`` then ``stek status``: the name and until when the ring
    remembers it (text and --json), never key bytes; once that instant has passed,
    nothing, though the stored ring still names it until its next change."""
    assert stek("init", "--store", url).returncode == 0
    r = stek("status", "--store", url)
    assert not re.search(r"^  revoked ", r.stdout, re.M), r.stdout
    assert json.loads(stek("status", "--json", "--store", url).stdout)["revoked"] == []
    store = FileStore(url[5:])
    gone = store.read().keys[0]
    r = subprocess.run([sys.executable, "-m", "stek", "revoke", gone.name.hex(), "--store", url],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(gone.expires_at))
    r = stek("status", "--store", url)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^  revoked +expires\n  {gone.name.hex()}  {until}$", r.stdout, re.M), \
        r.stdout
    r = stek("status", "--json", "--store", url)
    doc = json.loads(r.stdout)
    assert doc["revoked"] == [{"name": gone.name.hex(), "expires_at": until}]
    assert gone.name.hex() not in {k["name"] for k in doc["keys"]}
    for secret in (gone.aes_key, gone.hmac_key):
        assert secret.hex() not in r.stdout

    def backdate(ring: Keyring | None) -> Keyring:
        assert ring is not None
        return Keyring(ring.policy, ring.keys, ring.generation + 1,
                       ((gone.name, int(time.time()) - 1),))

    store.update(backdate)
    assert store.read().revoked, "the stored ring still names it"
    r = stek("status", "--store", url)
    assert gone.name.hex() not in r.stdout
    assert not re.search(r"^  revoked ", r.stdout, re.M), r.stdout
    assert json.loads(stek("status", "--json", "--store", url).stdout)["revoked"] == []


def test_stek_store_env_is_used(url: str) -> None:
    r = stek("init", env={"STEK_STORE": url})
    assert r.returncode == 0, r.stderr
    assert Path(url[5:]).exists()


def test_empty_stek_store_env_is_refused(tmp_path: Path) -> None:
    """STEK_STORE= (set, empty) is a mistake, as --store "" is, never the default ring."""
    for args in (["status"], ["init"], ["agent", "--no-metrics"]):
        r = stek(*args, env={"STEK_STORE": "", "XDG_RUNTIME_DIR": str(tmp_path)})
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and "STEK_STORE" in r.stderr, r.stderr
    assert not (tmp_path / "stek").exists()


def test_store_help_names_every_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    """One --store help text, naming every store URL scheme, on every command taking it."""
    for cmd in ("init", "rotate", "status", "agent", "export", "inspect", "rekey", "probe"):
        text = " ".join(stek_main(capsys, cmd, "--help").stdout.split())
        for scheme in ("file:PATH", "redis://", "rediss://", "redis+sentinel://",
                       "rediss+sentinel://", "unix://", "etcd://", "etcds://"):
            assert scheme in text, (cmd, scheme, text)
    text = " ".join(stek_main(capsys, "migrate", "--help").stdout.split())
    assert "rediss+sentinel://" in text and "unix://" in text, text


def test_every_duration_default_is_shown_with_its_unit() -> None:
    """--interval 60s, never a bare 60 next to --interval 30s elsewhere."""
    from stek.cli import cli
    from stek.cli._common import Duration

    defaults = {(name, p.name): p.default for name, cmd in cli.commands.items()
                for p in cmd.params if isinstance(p.type, Duration) and p.default is not None}
    assert ("probe", "interval") in defaults and ("agent", "interval") in defaults
    bare = {k: v for k, v in defaults.items() if not re.fullmatch(r"\d+[smhd]", str(v))}
    assert not bare, bare
    assert "[default: 60s]" in stek("probe", "--help").stdout


def test_help_explains_commands() -> None:
    r = stek("--help")
    assert r.returncode == 0
    for cmd in ("init", "rotate", "status", "agent"):
        assert cmd in r.stdout
    r = stek("init", "--help")
    assert "--rotate-every" in r.stdout and "forward-secrecy" in r.stdout


def test_agent_creates_rotates_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"file:{tmp_path / 'ring.json'}"
    log = tmp_path / "agent.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "stek.cli", "agent", "--store", url],
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        # Its first pass done (its SIGTERM handler is in place before that pass).
        wait_until(lambda: (tmp_path / "ring.json").exists()
                   and "initialized keyring" in log.read_text(), timeout=30, step=0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "initialized keyring" in out and "stopped" in out
    ring = FileStore(tmp_path / "ring.json").read()
    for k in ring:
        assert k.aes_key.hex() not in out and k.name.hex() in out


def test_agent_rotates_on_schedule(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    assert stek("init", "--store", f"file:{path}", "--rotate-every", "2s", "--accept-for",
                "3s", "--publish-ahead", "1s").returncode == 0
    first = {k.name for k in FileStore(path).read()}
    proc = subprocess.Popen([sys.executable, "-m", "stek.cli", "agent", "--store",
                             f"file:{path}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # Until every first key has expired (accept_for 3 s after its rotation).
        deadline = time.monotonic() + 30
        while first & {k.name for k in FileStore(path).read()}:
            assert time.monotonic() < deadline, "the agent never dropped the first keys"
            time.sleep(0.1)
        names = {k.name for k in FileStore(path).read()}
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert names - first, out
    assert not first & names, "keys past expires_at must have been dropped"
    assert "added key" in out and "dropped expired key" in out


def bad_invocations() -> list[list[str]]:
    """Usage mistakes for every command, drawn from its own parameters (new commands and
    options are walked too): an unknown option, an extra argument, each required parameter
    left out, each duration, number and choice given garbage, each valued option given
    no value."""
    import click

    from stek.cli import cli
    from stek.cli._common import Duration

    cases: list[list[str]] = [["frobnicate"], ["--no-such-option"]]
    for name, cmd in sorted(cli.commands.items()):
        required = [p for p in cmd.params if p.required]

        def fill(skip: click.Parameter | None = None,
                 _required: list[click.Parameter] = required) -> list[str]:
            out: list[str] = []
            for p in _required:
                if p is skip:
                    continue
                value = "nginx" if isinstance(p.type, click.Choice) else "x"
                out += [value] if isinstance(p, click.Argument) else [p.opts[0], value]
            return out

        cases.append([name, *fill(), "--no-such-option"])
        cases.append([name, *fill(), "extra-argument", "another"])
        for p in required:
            cases.append([name, *fill(skip=p)])
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.is_flag or p.count:
                continue
            if isinstance(p.type, (Duration, click.Choice, click.types._NumberParamTypeBase)):
                cases.append([name, *fill(), p.opts[0], "not-a-value"])
            if not p._flag_needs_value:  # bare (agent --mirror) takes its flag_value
                cases.append([name, *fill(), p.opts[0]])  # the value is missing
    cases += [
        ["agent", "--export", "nginx"],
        ["agent", "--export", "lighttpd:/x"],
        ["agent", "--reload", "true", "--export", "nginx:/x"],
        ["agent", "--export", "nginx:/x", "--haproxy-socket", "/s"],
        ["agent", "--export", "nginx:/x", "--reload", "a", "--reload", "a"],
        ["agent", "--scope", "a", "--export", "nginx:/x"],
        ["agent", "--export", "nginx:/x", "--scope", "a", "--scope", "b"],
        ["agent", "--export", "nginx:/x", "--scope", "no/slash"],
        ["agent", "--export", "nginx:/x", "--export", "envoy:/x"],
        ["agent", "--metrics-addr", "nowhere", "--store", "ftp://x"],
        ["agent", "--metrics-addr", "0.0.0.0:1", "--store", "ftp://x"],
        ["init", "--rotate-every", "0"],
        ["init", "--rotate-every", "7d", "--accept-for", "1d"],
        ["status", "--store", "ftp://host/x"],
    ]
    return cases


def test_every_usage_mistake_of_every_command_is_one_line_and_exits_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """stderr is exactly one 'stek: error: ...' line, no usage block, no traceback.

    In-process through stek.cli.main, what the console script runs (the exit
    status it returns and the stderr it writes are those of ``python -m
    stek.cli``, compared case by case for all of these): a process each would
    spend a minute here starting Python."""
    cases = bad_invocations()
    assert len({c[0] for c in cases}) >= 9, "every command is walked"
    failures = []
    monkeypatch.setenv("STEK_STORE", f"file:{tmp_path / 'ring.json'}")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    for args in cases:
        returncode = main(list(args))
        stderr = capsys.readouterr().err
        lines = stderr.splitlines()
        if returncode != 2 or len(lines) != 1 or not lines[0].startswith("stek: error: "):
            failures.append((args, returncode, stderr))
    assert not failures, "\n".join(map(repr, failures))


def test_operational_errors_exit_1_in_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An export under a path whose parent is a file says so; a store that is not a ring
    exits 1 (not 2: nothing was wrong with the command line)."""
    url = f"file:{tmp_path / 'ring.json'}"
    assert stek("init", "--store", url).returncode == 0
    (tmp_path / "file").write_text("")
    for fmt, out in (("haproxy", "file/keys"), ("nginx", "file"), ("nginx", "file/a/b"),
                     ("nginx", "file/sub"), ("envoy", "file/sub"), ("openssl", "file/a/b"),
                     ("haproxy", "file/sub/keys")):
        r = stek_main(capsys, "export", "--store", url, "--format", fmt, "--out",
                      str(tmp_path / out))
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1
        assert f"{tmp_path / 'file'} is not a directory" in r.stderr, r.stderr
        assert "File exists" not in r.stderr and "Not a directory" not in r.stderr
