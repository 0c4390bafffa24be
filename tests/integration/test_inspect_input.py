"""``stek inspect`` on untrusted input: bounded decoding, recognised input, safe output.

Nothing here is timed: inputs that took minutes or gigabytes before are
asserted to end in InvalidTicket or a one-line refusal (pytest-timeout turns
a regression into a failure), and memory is measured with tracemalloc or
bounded with RLIMIT_AS in a subprocess.
"""

from __future__ import annotations

import base64
import datetime
import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.tickets import key_in_state, now, ring_of, write_ring
from stek import session as sessions
from stek.errors import InvalidTicket
from stek.inspect_input import MAX_INPUT_LEN, Kind, recognize
from stek.inspection import read_input
from stek.stores.file import FileStore
from stek.ticket import seal

MB = 1024 * 1024


def tlv(tag: int, body: bytes) -> bytes:
    """One DER element (X.690 section 8.1.3: short or long definite length)."""
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + body


def der_int(n: int) -> bytes:
    """A non-negative INTEGER in its shortest form (OpenSSL's c2i refuses padding)."""
    return tlv(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))


def certificate(cn: str = "peer", sans: int = 0) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(datetime.datetime(2020, 1, 1))
               .not_valid_after(datetime.datetime(2040, 1, 1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(f"host{i}.example.com") for i in range(sans)]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def hostile_certificate(items: int, depth: int) -> bytes:
    """A real certificate whose signature algorithm parameters hold ``items`` SEQUENCEs
    each nested ``depth`` deep: valid DER that asn1crypto decodes element by element."""
    cert = asn1_x509.Certificate.load(certificate())
    inner = b""
    for _ in range(depth):
        inner = tlv(0x30, inner)
    ecdsa_sha256 = tlv(0x06, bytes.fromhex("2a8648ce3d040302"))
    alg = tlv(0x30, ecdsa_sha256 + tlv(0x30, inner * items))
    return tlv(0x30, cert["tbs_certificate"].dump() + alg + cert["signature_value"].dump())


def session_der(peer: bytes | None = None, *, sni: bytes | None = None,
                alpn: bytes | None = None, ticket: bytes | None = None,
                t: int | None = None) -> bytes:
    """An i2d_SSL_SESSION-shaped TLS 1.2 session (ssl/ssl_asn1.c field order)."""
    when = now() - 10 if t is None else t
    body = (tlv(0x02, b"\x01") + tlv(0x02, b"\x03\x03") + tlv(0x04, b"\xc0\x2c")
            + tlv(0x04, b"") + tlv(0x04, b"\x5a" * 48)
            + tlv(0xA1, der_int(when)) + tlv(0xA2, der_int(3600)))
    if peer is not None:
        body += tlv(0xA3, peer)
    body += tlv(0xA4, tlv(0x04, b"Python\x00"))
    if sni is not None:
        body += tlv(0xA6, tlv(0x04, sni))
    if ticket is not None:
        body += tlv(0xAA, tlv(0x04, ticket))
    if alpn is not None:
        body += tlv(0xB0, tlv(0x04, alpn))
    return tlv(0x30, body)


def peak_memory(fn: object, *args: object) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    try:
        fn(*args)  # type: ignore[operator]
        err: BaseException | None = None
    except BaseException as exc:
        err = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return err, peak


def run_cli(*args: str, stdin: bytes | None = None,
            limit_as: int | None = None) -> tuple[int, str]:
    def limit() -> None:
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    proc = subprocess.run([sys.executable, "-m", "stek.cli", *args], input=stdin,
                          capture_output=True, timeout=120, preexec_fn=limit)
    return proc.returncode, (proc.stdout + proc.stderr).decode("utf-8", "replace")


@pytest.fixture()
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    key = key_in_state("active", now())
    fs = FileStore(str(tmp_path / "ring.json"))
    write_ring(fs, ring_of(key))
    return key, f"file:{fs.path}"


# -- item 9: bounded PEM handling and decoding ------------------------------------------

@pytest.mark.parametrize("spaces", [3_000, 8_000, 200_000])
def test_pem_header_followed_by_spaces_is_refused(spaces: int) -> None:
    """A PEM header then many spaces and no END line: refused (was minutes: regex backtracking)."""
    text = "-----BEGIN SSL SESSION PARAMETERS-----" + " " * spaces
    with pytest.raises(InvalidTicket, match="no complete"):
        sessions.from_pem(text)
    with pytest.raises(InvalidTicket, match="no complete"):
        read_input(text.encode())


def test_oversized_session_is_refused_before_decoding() -> None:
    """A 2.7 MB session whose peer certificate nests SEQUENCEs (was 1.9 GB): refused
    by size, and the refusal itself allocates next to nothing."""
    der = session_der(hostile_certificate(680_000, 2))
    assert len(der) > 2_700_000
    err, peak = peak_memory(sessions.decode, der)
    assert isinstance(err, InvalidTicket) and "more than any session" in str(err)
    assert peak < 1 * MB, peak


def test_many_elements_within_the_size_cap_are_refused_in_bounded_memory() -> None:
    """~250 KB of empty SEQUENCEs in a certificate (was ~300x its size in memory):
    refused past MAX_ELEMENTS, with a peak under 8 MB."""
    der = session_der(hostile_certificate(120_000, 1))
    assert sessions.MAX_SESSION_LEN - 30_000 < len(der) <= sessions.MAX_SESSION_LEN
    err, peak = peak_memory(sessions.decode, der)
    assert isinstance(err, InvalidTicket) and "ASN.1 elements" in str(err)
    assert peak < 8 * MB, peak


def test_deep_nesting_is_refused_at_openssls_limit() -> None:
    """Nesting past ASN1_MAX_CONSTRUCTED_NEST (30), as OpenSSL's d2i refuses it."""
    with pytest.raises(InvalidTicket, match="nested deeper than 30"):
        sessions.decode(session_der(hostile_certificate(1, 60)))


def test_largest_decodable_session_stays_within_a_few_megabytes() -> None:
    """Just under MAX_ELEMENTS: accepted, and what asn1crypto builds stays under 16 MB."""
    der = session_der(hostile_certificate(sessions.MAX_ELEMENTS - 200, 1))
    err, peak = peak_memory(sessions.decode, der)
    assert err is None, err
    assert peak < 16 * MB, peak


def test_real_certificates_with_many_names_still_decode() -> None:
    """A certificate with 1,000 DNS names (about 30 KB) is within every bound."""
    info = sessions.decode(session_der(certificate("big", sans=1000)))
    assert info.peer_certificate and info.peer_subject == "Common Name: big"


def test_cli_refuses_a_huge_session_file_under_a_memory_limit(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    """The 2.7 MB session as a PEM file, the CLI under a 1 GiB address-space limit:
    exit 2 with the size cap, no traceback (was MemoryError or 1.9 GB)."""
    _, url = store
    pem = tmp_path / "huge.pem"
    pem.write_text(sessions.to_pem(session_der(hostile_certificate(680_000, 2),
                                               ticket=b"t" * 100)))
    code, out = run_cli("inspect", str(pem), "--store", url, limit_as=1024 * MB)
    assert code == 2, out
    assert f"more than {MAX_INPUT_LEN} bytes" in out and "Traceback" not in out


def test_cli_refuses_pem_spaces_on_stdin(store) -> None:  # type: ignore[no-untyped-def]
    """A PEM header and 100,000 spaces on stdin: exit 2, one line."""
    _, url = store
    code, out = run_cli("inspect", "-", "--store", url,
                        stdin=b"-----BEGIN SSL SESSION PARAMETERS-----" + b" " * 100_000)
    assert code == 2 and "no complete" in out and "Traceback" not in out, out


# -- item 10: terminal escapes never reach the terminal -------------------------------------

HOSTILE = "\x1b]0;owned\x07\x1b[2J\r\u202e\x9b31m"


def control_chars(text: str) -> set[str]:
    return {c for c in text if c != "\n" and not c.isprintable()}


def test_text_output_escapes_session_fields(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    """SNI, ALPN and the peer's subject full of escape sequences, in the ticket's state
    and in the client session: every non-printable character is printed escaped."""
    key, url = store
    peer = certificate(cn="cn" + HOSTILE)
    state = session_der(peer, sni=("sni" + HOSTILE).encode(), alpn=b"h2\x1b[31m\x00")
    ticket = seal(key, state)
    pem = tmp_path / "hostile.pem"
    pem.write_text(sessions.to_pem(session_der(peer, sni=("sni" + HOSTILE).encode(),
                                               ticket=ticket)))
    code, out = run_cli("inspect", str(pem), "--store", url)
    assert code == 0, out
    assert control_chars(out) == set(), sorted(control_chars(out))
    assert "sni\\x1b]0;owned\\x07\\x1b[2J\\x0d\\u202e\\x9b31m" in out
    assert "h2\\x1b[31m\\x00" in out and "cn\\x1b]0;owned" in out


# -- item 11: input recognition ------------------------------------------------------------

def test_private_key_pem_is_named_and_never_echoed(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    """A private key given by mistake: exit 2, 'a private key', none of its bytes shown."""
    _, url = store
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    path = tmp_path / "server.key"
    path.write_text(pem)
    code, out = run_cli("inspect", str(path), "--store", url)
    assert code == 2, out
    assert "PEM 'PRIVATE KEY' block: a private key" in out and "Traceback" not in out
    for line in pem.splitlines()[1:-1]:
        assert line[:16] not in out


@pytest.mark.parametrize(("text", "said"), [
    ("hello world this is just some text\n", "not a session PEM, nor a ticket"),
    ("Supercalifragilistic\n", "only 15 bytes"),
    ('{"version": 1, "keys": []}\n', "JSON"),
    ("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "a certificate"),
    ("abc\n", "odd number"),
])
def test_text_that_is_not_a_ticket_is_refused(text: str, said: str, store) -> None:  # type: ignore[no-untyped-def]
    """Prose, short words, JSON, other PEM: exit 2 saying what it is not (was: a ticket)."""
    _, url = store
    code, out = run_cli("inspect", "-", "--store", url, stdin=text.encode())
    assert code == 2, out
    assert said in out and "stek inspect reads" in out and "Traceback" not in out


def test_haproxy_key_file_is_named(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    """Three base64 lines of 80 bytes: a HAProxy tls-ticket-keys file, not a ticket."""
    _, url = store
    keys = "".join(base64.b64encode(bytes([i]) * 80).decode() + "\n" for i in range(3))
    code, out = run_cli("inspect", "-", "--store", url, stdin=keys.encode())
    assert code == 2 and "HAProxy tls-ticket-keys file" in out, out


@pytest.mark.parametrize("form", ["hex", "base64"])
def test_ticket_given_inline(form: str, store) -> None:  # type: ignore[no-untyped-def]
    """As the README promises: a hex or base64 ticket as the argument (was: No such file)."""
    key, url = store
    ticket = seal(key, session_der())
    arg = ticket.hex() if form == "hex" else base64.b64encode(ticket).decode()
    code, out = run_cli("inspect", arg, "--store", url)
    assert code == 0, out
    assert f"({form})" in out and "verdict       resume" in out


def test_missing_file_that_is_no_ticket_says_no_such_file(store) -> None:  # type: ignore[no-untyped-def]
    """A mistyped file name is still 'no such file', exit 2."""
    _, url = store
    code, out = run_cli("inspect", "sess.pen", "--store", url)
    assert code == 2 and "no such file" in out and "'sess.pen'" in out, out


def test_der_session_from_openssl_sess_id(tmp_path: Path, store) -> None:  # type: ignore[no-untyped-def]
    """A DER session written by 'openssl sess_id -outform DER' is recognised and judged."""
    key, url = store
    pem = tmp_path / "sess.pem"
    pem.write_text(sessions.to_pem(session_der(ticket=seal(key, session_der()))))
    der = tmp_path / "sess.der"
    proc = subprocess.run(["openssl", "sess_id", "-in", str(pem), "-outform", "DER",
                           "-out", str(der)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    code, out = run_cli("inspect", str(der), "--store", url, "--json")
    assert code == 0, out
    assert json.loads(out)["input_form"] == "session DER"


# Invariant (h11's, for INPUT): whatever bytes a user hands stek inspect, the
# recogniser gives a kind or raises InvalidTicket, never any other exception.
PEM_LABELS = st.sampled_from(["SSL SESSION PARAMETERS", "PRIVATE KEY", "CERTIFICATE", "X"])


@st.composite
def inputs(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=2048))
    if kind == 1:
        return draw(st.text(max_size=512)).encode("utf-8", "surrogatepass")
    if kind == 2:
        label = draw(PEM_LABELS)
        body = draw(st.text(alphabet="ABCDEFabcdef0123456789+/= \n", max_size=400))
        end = draw(st.sampled_from([f"-----END {label}-----\n", ""]))
        return f"-----BEGIN {label}-----\n{body}\n{end}".encode()
    if kind == 3:
        return draw(st.text(alphabet="0123456789abcdefABCDEF :\n", max_size=400)).encode()
    return base64.b64encode(draw(st.binary(max_size=300))) + draw(st.sampled_from(
        [b"", b"\n", b"=", b" x"]))


@settings(max_examples=1500, deadline=None)
@given(inputs())
def test_any_bytes_are_recognised_or_refused_clearly(data: bytes) -> None:
    """recognize() and read_input(): a kind, or InvalidTicket with a one-line reason."""
    try:
        found = recognize(data)
    except InvalidTicket as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(found.kind, Kind) and isinstance(found.payload, bytes)
    try:
        read_input(data)
    except InvalidTicket as exc:
        assert str(exc) and "\n" not in str(exc)
