"""stek.inspection and ``stek inspect``: the verdict, its reason, and that it matches OpenSSL."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.certs import TLS_VERSIONS
from helpers.inspect_rings import cli_store
from helpers.tickets import (
    HOUR,
    fresh_session_id,
    key_in_state,
    now,
    pem_der,
    ring_of,
    stek_server,
)
from stek import session as sessions
from stek.cli import main
from stek.inspection import inspect_ticket
from stek.keys import TicketKey
from stek.ticket import open_ticket, seal


@pytest.fixture(scope="module", params=[ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                ids=["tls12", "tls13"])
def issued(request, certs, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real s_client session file issued by a stek server, and the key that sealed it."""
    d = tmp_path_factory.mktemp("inspect")
    key = key_in_state("active", now())
    with stek_server(certs, d / "srv", ring_of(key)) as srv:
        path = srv.session_file(request.param)
    return key, path, d


def retimed(key: TicketKey, state: str, t: int) -> TicketKey:
    """The same key material, with windows that put it in ``state`` at ``t``."""
    w = key_in_state(state, t, key.size)
    return TicketKey(key.name, key.aes_key, key.hmac_key, w.activates_at, w.retires_at,
                     w.expires_at)


# -- the verdict matches what the real server does -------------------------------------------

CASES = ["active", "decrypt-only", "dropped", "expired", "tampered", "timed-out", "too-old"]


@TLS_VERSIONS
def test_verdict_matches_the_real_server(certs, tmp_path, tls_version) -> None:  # type: ignore[no-untyped-def]
    """For each case, inspect's 'would resume' is exactly what the stek server then does."""
    t = now()
    key = key_in_state("active", t)
    other = key_in_state("active", t)
    with stek_server(certs, tmp_path, ring_of(key)) as srv:
        der = pem_der(srv.session_file(tls_version))
        opened = open_ticket(sessions.ticket(der) or b"", srv.installation.ring)
        for case in CASES:
            ticket = sessions.ticket(der) or b""
            ring = ring_of(key)
            if case in ("decrypt-only", "expired"):
                ring = ring_of(retimed(key, case, t), other)
            elif case == "dropped":
                ring = ring_of(other)
            elif case == "tampered":
                ticket = ticket[:-1] + bytes((ticket[-1] ^ 1,))
            elif case == "timed-out":
                parsed = sessions._load(opened.state)
                parsed["time"] = t - parsed["timeout"].native - 60
                ticket = seal(key, parsed.dump())
            elif case == "too-old":
                # A renewed TLS 1.3 ticket: fresh time, but its full handshake
                # (stek's appdata) is more than accept_for ago.
                parsed = sessions._load(opened.state)
                parsed["time"] = t
                parsed["ticket_appdata"] = sessions.encode_birth(
                    t - ring.policy.accept_for - 60)
                ticket = seal(key, parsed.dump())
            srv.set_ring(ring)
            verdict = inspect_ticket(ticket, ring, now())
            crafted = sessions.replace(der, ticket=ticket, session_id=fresh_session_id())
            resumed = srv.resumes(tls_version, crafted, name=case)
            assert verdict.resumes == resumed == (case in ("active", "decrypt-only")), \
                (case, verdict.reason)
        assert srv.installation.counters.errors == 0


# -- the CLI ------------------------------------------------------------------------------------

def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """``stek`` as installed (console script), stdout + stderr."""
    proc = subprocess.run([sys.executable, "-m", "stek.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


def secrets_of(key: TicketKey, pem: Path) -> list[str]:
    master = bytes(sessions._load(pem_der(pem))["master_key"].native)
    out = []
    for s in (key.aes_key, key.hmac_key, master):
        out += [s.hex(), s.hex().upper(), base64.b64encode(s).decode()]
    return out


def test_cli_fresh_ticket_resumes(issued) -> None:  # type: ignore[no-untyped-def]
    """A fresh ticket: verdict resume, exit 0, the key named, the session decoded."""
    key, pem, d = issued
    code, out = run_cli("inspect", str(pem), "--store", cli_store(d, key))
    assert code == 0, out
    assert "verdict       resume\n" in out and key.name.hex() in out
    assert "active" in out and "TLSv1." in out and "never shown" in out
    assert not any(s in out for s in secrets_of(key, pem))


def test_cli_decrypt_only_key_resumes_and_renews(issued) -> None:  # type: ignore[no-untyped-def]
    """The key retired: resume and renew, exit 0."""
    key, pem, d = issued
    t = now()
    code, out = run_cli("inspect", str(pem), "--store",
                        cli_store(d, retimed(key, "decrypt-only", t), key_in_state("active", t)))
    assert code == 0, out
    assert "verdict       resume and renew" in out and "decrypt-only" in out
    assert not any(s in out for s in secrets_of(key, pem))


def test_cli_dropped_key_is_a_full_handshake(issued) -> None:  # type: ignore[no-untyped-def]
    """The key left the ring: full handshake, unknown key, exit 1."""
    _key, pem, d = issued
    stranger = key_in_state("active", now())
    code, out = run_cli("inspect", str(pem), "--store", cli_store(d, stranger))
    assert code == 1, out
    assert "verdict       full handshake" in out and "reason        unknown key" in out


def test_cli_tampered_ticket_is_a_bad_mac(issued) -> None:  # type: ignore[no-untyped-def]
    """One bit changed in the ticket of the session file: bad MAC, exit 1."""
    key, pem, d = issued
    der = pem_der(pem)
    ticket = bytearray(sessions.ticket(der) or b"")
    ticket[40] ^= 0x04
    tampered = d / f"tampered-{pem.name}"
    tampered.write_text(sessions.to_pem(sessions.replace(der, ticket=bytes(ticket))))
    code, out = run_cli("inspect", str(tampered), "--store", cli_store(d, key))
    assert code == 1, out
    assert "reason        bad MAC" in out
    assert not any(s in out for s in secrets_of(key, pem))


def test_cli_garbage_is_malformed(issued) -> None:  # type: ignore[no-untyped-def]
    """Garbage hex on stdin: malformed, exit 1."""
    key, _, d = issued
    code, out = run_cli("inspect", "-", "--store", cli_store(d, key), stdin="deadbeef00\n")
    assert code == 1, out
    assert "reason        malformed" in out


def test_cli_json(issued) -> None:  # type: ignore[no-untyped-def]
    """--json: verdict, key state and session fields; no secrets."""
    key, pem, d = issued
    code, out = run_cli("inspect", str(pem), "--json", "--store", cli_store(d, key))
    assert code == 0, out
    doc = json.loads(out)
    assert doc["verdict"] == "resume" and doc["resumes"] is True
    assert doc["key"]["name"] == key.name.hex() and doc["key"]["state"] == "active"
    assert doc["session"]["master_secret_len"] == 48
    assert doc["client_session"]["ticket_len"] == doc["ticket_len"]
    assert not any(s in out for s in secrets_of(key, pem))


def test_cli_base64_ticket_on_stdin(issued) -> None:  # type: ignore[no-untyped-def]
    """A raw base64 ticket read from '-' is judged like the session file."""
    key, pem, d = issued
    b64 = base64.b64encode(sessions.ticket(pem_der(pem)) or b"").decode()
    code, out = run_cli("inspect", "-", "--store", cli_store(d, key), stdin=b64)
    assert code == 0 and "(base64)" in out, out


@pytest.mark.parametrize("args", [
    ("inspect", "/nonexistent/session.pem"),
    ("inspect",),
    ("inspect", "-"),
])
def test_cli_usage_and_io_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    """Missing file, missing INPUT, unreadable input: exit 2, one line, no traceback."""
    store = cli_store(tmp_path, key_in_state("active", now()))
    code, out = run_cli(*args, "--store", store, stdin="not a ticket at all!")
    assert code == 2, out
    assert "Traceback" not in out


def test_cli_missing_store_exits_2(tmp_path: Path) -> None:
    """No keyring at the store URL: exit 2 with stek's one-line error."""
    code, out = run_cli("inspect", "-", "--store", f"file:{tmp_path}/none.json",
                        stdin="00" * 100)
    assert code == 2 and "stek: error:" in out and "Traceback" not in out


def test_cli_help_documents_exit_codes() -> None:
    """--help lists the three exit statuses."""
    code, out = run_cli("inspect", "--help")
    assert code == 0
    assert "0  the server would resume" in out and "1  the server would not" in out
    assert "2  usage error" in out


def test_main_returns_the_exit_status(issued, capsys) -> None:  # type: ignore[no-untyped-def]
    """In-process: stek.cli.main() returns 0 / 1 like the console script."""
    key, pem, d = issued
    assert main(["inspect", str(pem), "--store", cli_store(d, key)]) == 0
    stranger = key_in_state("active", now() + HOUR)
    assert main(["inspect", str(pem), "--store", cli_store(d, stranger)]) == 1
    capsys.readouterr()

