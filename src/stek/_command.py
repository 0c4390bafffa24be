"""Running an operator's reload command: its own process group, a scrubbed environment.

A reload command is a ``/bin/sh -c`` string, as a cron line or systemd's
``ExecReload=`` would be.  Whatever it starts must not outlive the agent's
patience, so the shell runs in a new session (``setsid(2)``, through
``subprocess.Popen(start_new_session=True)``), which makes it the leader of
its own process group; on timeout, or when the agent stops, the whole group
gets SIGTERM, then SIGKILL (``killpg(2)``).  The leader is not reaped before
the last signal: while it is an unreaped zombie its pid, hence the group id,
cannot be reused (``waitid(2)`` with ``WNOWAIT`` watches it meanwhile).

The command's environment is the agent's minus its secrets: the
key-encryption key (``STEK_KEK``, ``STEK_KEK_FILE``), every other ``STEK_*``
variable whose name says it holds a secret, and every variable whose value
holds a secret stek holds, whatever its name: the store URL when it carries
a password, the store's passwords (written in the URL, read from a
``password_file=`` or the environment: a ``$REDISCLI_AUTH`` copy goes too),
and the key-encryption keys (as base64, as in a KEK file, and as hex).

Its output goes to an unlinked file, of which only the last ``TAIL`` bytes
are read back, in bounded chunks: a reload that prints 400 MB costs the
agent no memory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO
from urllib.parse import parse_qsl, unquote

from .errors import StekError
from .stores.sealing import KEK_ENV, KEK_FILE_ENV, read_kek_file
from .stores.url import parse, split

#: A reload command that runs longer than this is killed and counted as failed.
RELOAD_TIMEOUT = 60.0
#: After SIGTERM, how long the group has before SIGKILL (seconds).
KILL_GRACE = 2.0
#: How often a running command is checked for timeout or shutdown (seconds).
POLL = 0.1
#: Bytes of the command's output kept for the log.
TAIL = 300

#: ``STEK_*`` names that hold secrets (or say where one is).
SECRET_NAME = re.compile(r"^STEK_\w*(KEK|PASSWORD|PASSWD|TOKEN|SECRET|CREDENTIAL|AUTH)",
                         re.IGNORECASE)
#: URL query parameters that carry a credential, or name the variable holding one.
_SECRET_PARAM = re.compile(r"(password|passwd|token|secret)", re.IGNORECASE)


@dataclass(frozen=True)
class CommandResult:
    returncode: int | None  # None: it did not finish (timeout, shutdown) or could not start
    seconds: float
    detail: str  # a short tail of its output (stderr and stdout), or why it did not finish


def run_command(command: str, timeout: float = RELOAD_TIMEOUT, *,
                env: Mapping[str, str] | None = None,
                cancel: threading.Event | None = None) -> CommandResult:
    """Run ``command`` with ``/bin/sh -c`` in its own process group; never raises.

    The group is killed after ``timeout`` seconds, or as soon as ``cancel``
    is set (the agent is stopping).  Output goes to an unlinked temporary
    file, not a pipe, so a background child that keeps the descriptor open
    cannot make the agent wait for it.
    """
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(  # noqa: S602 - an operator-given shell command, documented
                command, shell=True, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                start_new_session=True,
            )
        except OSError as exc:
            return CommandResult(None, time.monotonic() - start,
                                 f"could not run: {exc.strerror}")
        why = _wait(proc, start + timeout, cancel)
        if why is not None:
            _kill_group(proc)
            why = why if why != "timeout" else f"timed out after {timeout:g}s"
        tail = _tail(out).decode(errors="replace").strip()
    seconds = time.monotonic() - start
    if why is not None:
        return CommandResult(None, seconds, why)
    return CommandResult(proc.returncode, seconds, tail)


def _tail(out: IO[bytes]) -> bytes:
    """The last ``TAIL`` bytes of ``out``: seek to them, never read the whole file."""
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - TAIL))
    return out.read(TAIL)


def _wait(proc: subprocess.Popen[bytes], deadline: float,
          cancel: threading.Event | None) -> str | None:
    """Wait for ``proc``; None once it exited, else why it must be killed (unreaped)."""
    while True:
        if _exited(proc.pid):
            proc.wait()
            return None
        if cancel is not None and cancel.is_set():
            return "stopped: the agent is shutting down"
        if time.monotonic() >= deadline:
            return "timeout"
        if cancel is not None:
            cancel.wait(POLL)
        else:
            time.sleep(POLL)


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (``waitid(2)``, ``WNOWAIT``)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the command's process group, SIGKILL it after KILL_GRACE, then reap."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline and not _exited(proc.pid):
        time.sleep(POLL / 2)
    # The leader is still unreaped here, so the group id is still this group's;
    # children that outlived the leader, or ignored SIGTERM, are killed now.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def url_secrets(url: str) -> tuple[set[str], set[str]]:
    """(credential values, names of variables holding credentials) found in a store URL.

    The password is found by :func:`stek.stores.url.split`, as the store
    itself finds it, and counted both as written and percent-decoded.
    """
    parts = split(url)
    values = {parts.password, unquote(parts.password)} if parts.password else set()
    names: set[str] = set()
    for key, value in parse_qsl(parts.query or ""):
        if not value or not _SECRET_PARAM.search(key):
            continue
        if key.lower().endswith("_env"):
            names.add(value)
        else:
            values.add(value)
    return values, names


def held_secrets(url: str, environ: Mapping[str, str],
                 kek_files: Iterable[str] = ()) -> set[str]:
    """Every secret stek holds for the store at ``url``, as text that may show up
    in a variable: its passwords (wherever they were read from) and its KEKs."""
    values: set[str] = set()
    options: dict[str, str] = {}
    with contextlib.suppress(StekError):  # a URL stek cannot parse holds nothing it uses
        parsed = parse(url, environ)
        values |= set(parsed.all_secrets())
        options = parsed.options
    keks: list[bytes] = []
    for path in (*kek_files, options.get("kek_file"), environ.get(KEK_FILE_ENV)):
        if path:
            with contextlib.suppress(StekError):
                keks += read_kek_file(path)
    text = environ.get(KEK_ENV, "").strip()
    if text:
        values.add(text)
        with contextlib.suppress(binascii.Error, ValueError):
            keks.append(base64.b64decode(text, validate=True))
    for kek in keks:
        values |= {base64.b64encode(kek).decode(), base64.urlsafe_b64encode(kek).decode(),
                   kek.hex(), kek.hex().upper()}
    return values


def reload_environment(environ: Mapping[str, str], store_urls: Iterable[str] = (),
                       extra_names: Iterable[str] = (),
                       kek_files: Iterable[str] = ()) -> dict[str, str]:
    """``environ`` without the agent's secrets, for reload commands (see the module doc)."""
    values: set[str] = set()
    names = set(extra_names)
    kek_files = tuple(kek_files)
    for url in store_urls:
        v, n = url_secrets(url)
        if v or n:
            values.add(url)  # $STEK_STORE, or wherever the URL itself came from
        values |= v | held_secrets(url, environ, kek_files)
        names |= n
    values = {v for v in values if len(v) >= 4}  # a tiny value would match by accident
    return {k: v for k, v in environ.items()
            if not SECRET_NAME.match(k) and k not in names
            and not any(s in v for s in values)}
