"""The README and docs say what stek does: the decision table, the metrics table, the
tests they cite, and every shell example marked runnable.

Runnable examples: a line ``<!-- test -->`` right before a ```` ```sh ```` block in
README.md or docs/*.md makes that block a test.  It runs under bash with
``set -euo pipefail`` in a fresh temporary directory, with ``STEK_STORE`` pointing
at a ring there, this Python's ``stek`` first on PATH and no KEK in the
environment; it passes when it exits 0.  Mark every example that can run on
one machine (no other host, no root, nothing outside its directory).
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stek
from helpers.certs import Certs, server_context
from helpers.tls_peers import TLSServer
from stek.agent import Agent, AgentCollector, Target, TargetSpec
from stek.rotation import init_ring
from stek.schedule import LIFECYCLE, Policy, State
from stek.stores import FileStore

ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
ROW = re.compile(r"^\| (pending|active|decrypt-only|expired or unknown) \|(.*)$", re.M)
MARK = "<!-- test -->"
FENCE = re.compile(r"^```(sh|bash)\s*$")


def test_readme_table_matches_the_lifecycle() -> None:
    rows = {m.group(1).split()[0]: [c.strip() for c in m.group(2).split("|")]
            for m in ROW.finditer(README.read_text())}
    assert set(rows) == {s.value for s in State}
    for state, row in LIFECYCLE.items():
        _when, enc1, enc0, *_ = rows[state.value]
        assert ("never" in enc1 or enc1 == "—") != row.encrypts, (state, enc1)
        expected = (str(int(row.answer_tls12)) if row.answer_tls12 == row.answer_tls13
                    else f"{int(row.answer_tls12)} / {int(row.answer_tls13)}")
        assert enc0.startswith(expected), (state, enc0, expected)


# -- runnable shell examples ----------------------------------------------------------------

def runnable_blocks(doc: Path) -> list[tuple[str, str]]:
    """(``file:line``, code) of each block marked runnable; a stray mark is an error."""
    lines = doc.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        where = f"{doc.relative_to(ROOT)}:{i + 1}"
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            raise AssertionError(f"{where}: {MARK} must be followed by a ```sh block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise AssertionError(f"{where}: unterminated code block")
        blocks.append((where, "\n".join(lines[i + 2:end]) + "\n"))
    return blocks


BLOCKS = [b for doc in DOCS for b in runnable_blocks(doc)]


def test_docs_have_runnable_examples() -> None:
    assert len(BLOCKS) >= 2, "the README's quickstart and the exporters' example at least"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_shell_example_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEK_")}
    env["STEK_STORE"] = f"file:{tmp_path / 'ring.json'}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{where} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr


def test_readme_sess_out_line_writes_a_session_stek_inspect_decodes(
        certs: Certs, tmp_path: Path) -> None:
    """The README's ``sleep 1 | openssl s_client ... -sess_out sess.pem``, exactly as
    written but for the host and port, against a local TLS 1.3 server with stek:
    sess.pem holds the session and its ticket, and ``stek inspect sess.pem`` decodes it."""
    line = next(ln for ln in README.read_text().splitlines()
                if ln.startswith("sleep 1 | openssl s_client") and "-sess_out sess.pem" in ln)
    store = FileStore(tmp_path / "ring.json")
    ring = init_ring(store, Policy()).ring
    ctx = server_context(certs)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # the ticket comes after the handshake
    handle = stek.install(ctx, store)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEK_")}
    env["STEK_STORE"] = f"file:{store.path}"
    with TLSServer(ctx) as srv:
        cmd = line.replace("example.com:443", f"127.0.0.1:{srv.port}") \
            .replace("-servername example.com", "-servername localhost")
        assert "example.com" not in cmd
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "-----BEGIN SSL SESSION PARAMETERS-----" in (tmp_path / "sess.pem").read_text()
    assert handle.counters.issued >= 1
    active = ring.encrypting_key(time.time())
    assert active is not None
    out = subprocess.run([sys.executable, "-m", "stek.cli", "inspect", "sess.pem"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr  # 0: the server would resume it
    assert f"key name {active.name.hex()}" in out.stdout
    assert "TLSv1.3" in out.stdout and "resume" in out.stdout


# -- what the docs cite -----------------------------------------------------------------------

def test_cited_tests_exist() -> None:
    """Every ``tests/FILE.py``, ``tests/FILE.py::test_NAME`` and ``test_NAME`` the docs cite
    is there (``test_NAME...`` stands for any test whose name starts so)."""
    def defined(files: list[Path]) -> set[str]:
        return {m for f in files for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}

    everywhere = defined(list((ROOT / "tests").rglob("*.py")))
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for path in re.findall(r"\btests/[\w*/]+\.py\b", text):
            if not list(ROOT.glob(path)):
                missing.append(f"{doc.name}: {path}")
        for path, name, dots in re.findall(
                r"`(?:(tests/[\w*/]+\.py)::)?(test_\w+)(\.\.\.)?`", text):
            names = defined(list(ROOT.glob(path))) if path else everywhere
            if not any(n == name or (dots and n.startswith(name)) for n in names):
                missing.append(f"{doc.name}: {path}::{name}{dots}")
    assert not missing, missing


def test_metrics_table_lists_every_metric(tmp_path: Path) -> None:
    """docs/exporters.md's table names exactly the agent's metrics (counters as _total)."""
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy())
    agent = Agent(store, targets=[
        Target(TargetSpec("openssl", tmp_path / "k", reloads=("true",)))])
    agent.step()
    served = {f.name + ("_total" if f.type == "counter" else "")
              for f in AgentCollector(agent).collect()}
    table = (ROOT / "docs" / "exporters.md").read_text()
    documented = {m for row in table.splitlines() if row.startswith("| `stek_")
                  for m in re.findall(r"`(stek_\w+)", row.split(" | ")[0])}
    assert served - documented == set(), "metrics served but not documented"
    assert documented - served == set(), "metrics documented but not served"


# -- what the README claims about stores ----------------------------------------------------

STORE_URL = re.compile(r"\b(?:rediss?(?:\+sentinel)?|unix|etcds?)://[^\s'\"`|)]+")


def test_no_doc_puts_a_password_in_a_store_url() -> None:
    """Examples name a password_file=, never user:PASSWORD@ (a URL reaches logs and ps)."""
    from stek.stores.url import split

    found = [(doc.name, url) for doc in DOCS for url in STORE_URL.findall(doc.read_text())
             if split(url).password is not None]
    assert not found, found


def test_readme_names_the_commands_that_take_store() -> None:
    """The README's list of commands taking --store/$STEK_STORE is the CLI's."""
    from stek.cli import cli

    text = " ".join(README.read_text().split())
    claim = re.search(r"`--store URL` \(or `\$STEK_STORE`\) selects the store of (.*?)\.", text)
    assert claim, "the README says which commands take --store"
    said = set(re.findall(r"`(\w+)`", claim.group(1)))
    takes = {name for name, cmd in cli.commands.items()
             for p in cmd.params if p.name == "store_url" and p.envvar == "STEK_STORE"}
    assert said == takes


def test_readme_gives_every_default_store_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each place the default file store may be (stores/file.py default_path) is named."""
    from stek.stores.file import default_path

    text = " ".join(README.read_text().split())
    monkeypatch.setenv("XDG_RUNTIME_DIR", "$XDG_RUNTIME_DIR")
    paths = [default_path()]
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("HOME", "/HOME")
    for euid in (0, 1000):
        monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
        paths.append(default_path())
    shown = {str(p).replace("/HOME", "~", 1) for p in paths}
    assert len(shown) == 3
    missing = [p for p in shown if f"`{p}`" not in text]
    assert not missing, missing
