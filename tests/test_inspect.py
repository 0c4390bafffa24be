"""stek.inspect and ``stek inspect``: the verdict, its reason, and that it matches OpenSSL."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TLS_VERSIONS, client_context, server_context
from stek import session as sessions
from stek.cli import main
from stek.errors import InvalidTicket
from stek.inspect import Verdict, inspect_session, inspect_ticket, read_ticket, ticket_of
from stek.keys import TicketKey
from stek.schedule import Answer, State
from stek.stores.file import FileStore
from stek.ticket import open_ticket, seal
from support import TLSServer, connect
from test_ticket import STATE
from ticket_support import (
    HOUR,
    fresh_session_id,
    key_in_state,
    now,
    pem_der,
    ring_of,
    stek_server,
    write_ring,
)

NOW = 1_800_000_000


def state_at(t: int, *, tls13: bool = True, timeout: int = 3600) -> bytes:
    """The pinned session, re-timed to ``t`` (TLS 1.3, or switched to TLS 1.2)."""
    parsed = sessions._load(STATE)
    parsed["time"] = t
    parsed["timeout"] = timeout
    if not tls13:
        parsed["ssl_version"] = 0x0303
        parsed["cipher"] = b"\xc0\x2c"
    return bytes(parsed.dump())


def retimed(key: TicketKey, state: str, t: int) -> TicketKey:
    """The same key material, with windows that put it in ``state`` at ``t``."""
    w = key_in_state(state, t, key.size)
    return TicketKey(key.name, key.aes_key, key.hmac_key, w.activates_at, w.retires_at,
                     w.expires_at)


# -- the verdict (pure: ring and clock passed in) ----------------------------------------

@pytest.mark.parametrize(("state", "tls13", "verdict", "answer"), [
    ("active", False, Verdict.RESUME, Answer.OK),
    ("active", True, Verdict.RESUME, Answer.RENEW),  # TLS 1.3 always re-issues (nginx #1892)
    ("pending", False, Verdict.RESUME, Answer.OK),
    ("decrypt-only", False, Verdict.RESUME_AND_RENEW, Answer.RENEW),
    ("decrypt-only", True, Verdict.RESUME_AND_RENEW, Answer.RENEW),
])
def test_verdict_follows_the_lifecycle_table(state: str, tls13: bool, verdict: Verdict,
                                             answer: Answer) -> None:
    """Pending/active resume, decrypt-only resumes and renews; the answer is the callback's."""
    key = key_in_state(state, NOW)
    result = inspect_ticket(seal(key, state_at(NOW - 10, tls13=tls13)), ring_of(key), NOW)
    assert (result.verdict, result.answer, result.key_state) == (verdict, answer, State(state))
    assert result.resumes and result.session is not None and result.session.tls13 == tls13


def test_expired_key_gives_full_handshake_with_its_expiry() -> None:
    """A key still in the ring but past expires_at: 'expired at <time>'."""
    key = key_in_state("expired", NOW)
    result = inspect_ticket(seal(key, state_at(NOW)), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.key_state is State.EXPIRED
    assert result.reason.startswith("expired at 2027-01-15T07:59:55Z")  # NOW - 5 s


def test_unknown_key_gives_full_handshake() -> None:
    """A ticket whose key left the ring: 'unknown key'."""
    dropped, kept = key_in_state("active", NOW), key_in_state("active", NOW)
    result = inspect_ticket(seal(dropped, state_at(NOW)), ring_of(kept), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.key is None
    assert result.reason.startswith("unknown key") and dropped.name.hex() in result.reason


def test_tampered_ticket_gives_bad_mac() -> None:
    """One flipped bit: 'bad MAC', though the key is found and active."""
    key = key_in_state("active", NOW)
    ticket = bytearray(seal(key, state_at(NOW)))
    ticket[-5] ^= 0x80
    result = inspect_ticket(bytes(ticket), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.key == key
    assert result.reason.startswith("bad MAC")


@pytest.mark.parametrize("data", [b"", b"\x01" * 5, b"\x02" * 31])
def test_garbage_is_malformed(data: bytes) -> None:
    """Shorter than name + IV: OpenSSL never even asks the callback."""
    result = inspect_ticket(data, ring_of(key_in_state("active", NOW)), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE and result.reason.startswith("malformed")


def test_known_name_but_truncated_is_malformed() -> None:
    """A real key name followed by too few bytes: malformed."""
    key = key_in_state("active", NOW)
    result = inspect_ticket(seal(key, STATE)[:60], ring_of(key), NOW)
    assert result.key == key and result.reason.startswith("malformed")


def test_garbage_state_under_a_valid_mac_is_a_malformed_session() -> None:
    """A ticket that opens to something not an SSL_SESSION: full handshake (d2i fails)."""
    key = key_in_state("active", NOW)
    result = inspect_ticket(seal(key, b"not DER at all"), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE
    assert result.reason.startswith("malformed session")


def test_session_past_its_own_timeout_gives_full_handshake() -> None:
    """time + timeout passed: OpenSSL refuses it even under an active key."""
    key = key_in_state("active", NOW)
    result = inspect_ticket(seal(key, state_at(NOW - 7200, timeout=3600)), ring_of(key), NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE
    assert result.reason.startswith("session timed out")


def test_session_older_than_accept_for_gives_full_handshake() -> None:
    """stek's appdata says the full handshake was too long ago, however fresh the ticket."""
    key = key_in_state("active", NOW)
    ring = ring_of(key)
    parsed = sessions._load(state_at(NOW - 10))
    parsed["ticket_appdata"] = sessions.encode_birth(NOW - ring.policy.accept_for)
    result = inspect_ticket(seal(key, parsed.dump()), ring, NOW)
    assert result.verdict is Verdict.FULL_HANDSHAKE
    assert result.reason.startswith("session too old")
    assert result.session is not None and result.session.born_at == NOW - ring.policy.accept_for


def test_inspection_never_holds_key_bytes_in_its_dict() -> None:
    """to_dict (the --json output) names keys, never their material or the secret."""
    key = key_in_state("active", NOW)
    doc = json.dumps(inspect_ticket(seal(key, state_at(NOW)), ring_of(key), NOW).to_dict())
    for secret in (key.aes_key, key.hmac_key, b"\x5a" * 48):
        assert secret.hex() not in doc and base64.b64encode(secret).decode() not in doc


# -- input parsing -----------------------------------------------------------------------

def test_read_ticket_accepts_hex_base64_and_pem() -> None:
    """INPUT forms: hex, base64 (standard or URL-safe, any padding), session PEM."""
    key = key_in_state("active", NOW)
    ticket = seal(key, STATE)
    assert read_ticket(ticket.hex().upper() + "\n").ticket == ticket
    assert read_ticket(base64.b64encode(ticket).decode()).ticket == ticket
    assert read_ticket(base64.urlsafe_b64encode(ticket).decode().rstrip("=")).ticket == ticket
    client = sessions.replace(STATE, ticket=ticket)
    got = read_ticket(sessions.to_pem(client))
    assert got.ticket == ticket and got.client_session is not None and got.form == "session PEM"


@pytest.mark.parametrize("text", ["", "   \n", "not a ticket!",
                                  "-----BEGIN SSL SESSION PARAMETERS-----"])
def test_read_ticket_refuses_what_it_cannot_read(text: str) -> None:
    """Neither PEM, hex nor base64: InvalidTicket (the CLI maps it to exit 2)."""
    with pytest.raises(InvalidTicket):
        read_ticket(text)


def test_read_ticket_refuses_a_session_without_ticket() -> None:
    """A session file with no ticket in it says so."""
    with pytest.raises(InvalidTicket, match="no ticket"):
        read_ticket(sessions.to_pem(STATE))


# -- Python ssl.SSLSession helpers --------------------------------------------------------

@TLS_VERSIONS
def test_ticket_of_and_inspect_session_on_a_python_client(certs, tmp_path, tls_version) -> None:  # type: ignore[no-untyped-def]
    """ticket_of() gives the ticket the client will present; inspect_session() judges it."""
    key = key_in_state("active", now())
    with stek_server(certs, tmp_path, ring_of(key)) as srv:
        cctx = client_context(certs, tls_version)
        r = connect(srv.port, cctx)
        assert r.session is not None
        ticket = ticket_of(r.session)
        assert ticket is not None and ticket[:16] == key.name
        result = inspect_session(r.session, srv.installation.ring)
        assert result.verdict is Verdict.RESUME
        assert result.client_session is not None and result.client_session.tls13 == (
            tls_version == ssl.TLSVersion.TLSv1_3)
        assert connect(srv.port, cctx, r.session).reused


def test_ticket_of_is_none_without_a_ticket(certs) -> None:  # type: ignore[no-untyped-def]
    """A TLS 1.2 session from a server with OP_NO_TICKET holds no ticket: None."""
    ctx = server_context(certs)
    ctx.options |= ssl.OP_NO_TICKET
    with TLSServer(ctx) as srv:
        r = connect(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2))
    assert r.session is not None and ticket_of(r.session) is None


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


@pytest.fixture(scope="module", params=[ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                ids=["tls12", "tls13"])
def issued(request, certs, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A real s_client session file issued by a stek server, and the key that sealed it."""
    d = tmp_path_factory.mktemp("inspect")
    key = key_in_state("active", now())
    with stek_server(certs, d / "srv", ring_of(key)) as srv:
        path = srv.session_file(request.param)
    return key, path, d


def cli_store(d: Path, *keys: TicketKey) -> str:
    store = FileStore(str(d / "ring-under-test.json"))
    write_ring(store, ring_of(*keys))
    return f"file:{store.path}"


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
