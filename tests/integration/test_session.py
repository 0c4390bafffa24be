"""SSL_SESSION decoding (stek.session): against real sessions and OpenSSL's own reader."""

from __future__ import annotations

import re
import ssl
import subprocess
from pathlib import Path

from helpers import session_server
from helpers.certs import TLS_VERSIONS
from helpers.programs import find_program
from stek import session as sessions

# Fixtures shared with the other half of these tests (tests/unit or tests/integration).
server = session_server.server


def field(text: str, label: str) -> str:
    m = re.search(rf"^\s*{re.escape(label)}\s*:\s*(.*)$", text, re.M)
    assert m, f"{label!r} not in:\n{text}"
    return m.group(1).strip()


def sess_id_text(path: Path) -> str:
    """OpenSSL's own reading of a session file (d2i_SSL_SESSION + SSL_SESSION_print)."""
    return subprocess.run([find_program("openssl"), "sess_id", "-in", str(path), "-noout",
                           "-text"], capture_output=True, text=True, check=True).stdout


@TLS_VERSIONS
def test_decode_agrees_with_openssl_sess_id(server, tls_version) -> None:  # type: ignore[no-untyped-def]
    """An s_client -sess_out file: same fields as 'openssl sess_id -text' prints."""
    path = server.session_file(tls_version)
    info = sessions.decode(sessions.from_pem(path.read_text()))
    text = sess_id_text(path)
    assert field(text, "Protocol") == info.protocol
    assert field(text, "Session-ID").lower() == info.session_id.hex()
    assert int(field(text, "Start Time")) == info.created_at
    assert int(field(text, "Timeout").split()[0]) == info.timeout
    assert int(field(text, "TLS session ticket lifetime hint").split()[0]) == info.lifetime_hint
    if info.tls13:
        assert int(field(text, "Max Early Data")) == info.max_early_data


@TLS_VERSIONS
def test_replace_ticket_is_read_back_by_openssl(server, tls_version, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """replace(ticket=...) re-encodes a session OpenSSL reads, carrying the new ticket."""
    der = sessions.from_pem(server.session_file(tls_version).read_text())
    new = sessions.replace(der, ticket=b"\xab" * 50, session_id=b"\xcd" * 32)
    assert sessions.ticket(new) == b"\xab" * 50
    assert sessions.decode(new).session_id == b"\xcd" * 32
    path = tmp_path / "new.pem"
    path.write_text(sessions.to_pem(new))
    text = sess_id_text(path)
    assert "ab ab ab ab" in text and field(text, "Session-ID") == "CD" * 32
    # Everything else is untouched.
    before, after = sessions.decode(der), sessions.decode(new)
    assert (before.created_at, before.cipher_id, before.secret_len) == \
        (after.created_at, after.cipher_id, after.secret_len)


def test_replace_ticket_none_removes_it(server) -> None:  # type: ignore[no-untyped-def]
    """ticket=None drops the field; replacing with the same ticket changes nothing."""
    der = sessions.from_pem(server.session_file(ssl.TLSVersion.TLSv1_2).read_text())
    assert sessions.replace(der, ticket=sessions.ticket(der)) == der
    assert sessions.ticket(sessions.replace(der, ticket=None)) is None
