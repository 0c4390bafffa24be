"""The binding proven at run time (stek.hazmat.proof) instead of looked up.

An unknown CPython is simulated on this one: stek.hazmat.libssl.CPYTHON_SSL
emptied and the process's proof forgotten, so every install below goes
through a fresh proof.  Where the proof fails (a wrong pointer, a callback
never invoked, a free-threaded build), install() refuses with one line,
leaves the context untouched, and nothing crashes.
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.processes import APPS, env_with, line_request, running
from helpers.tls_peers import TLSServer, connect, reconnects
from helpers.web_servers import get, live_store, nginx
from stek.compat import nginx_session_id_context
from stek.errors import BindingError
from stek.export import export
from stek.hazmat import libssl as hz
from stek.hazmat import proof
from stek.schedule import Policy
from stek.stores.memory import MemoryStore


@pytest.fixture
def unknown_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPython as one stek's table never heard of, proven afresh."""
    monkeypatch.setattr(hz, "CPYTHON_SSL", {})
    monkeypatch.setattr(proof, "_PROVEN", {})


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    stek.init_ring(s, Policy())
    return s


def _refusal(exc: pytest.ExceptionInfo[BindingError]) -> str:
    line = str(exc.value)
    assert "\n" not in line
    assert line.startswith("the binding proof failed: ") or "free-threaded" in line
    return line


# -- the proof finds what the table says, where the table knows ---------------------

def test_proof_agrees_with_the_table_on_this_python() -> None:
    proven = proof.binding(hz.libssl())
    assert proven.ctx_offset == proof.POINTER_OFFSET
    assert proven.session_offset == proof.POINTER_OFFSET
    known = hz.CPYTHON_SSL.get(sys.version_info[:2])
    if known is not None:
        assert (proven.python_session_id_context, proven.applied_to) == \
            (known.session_id_context, known.applied_to)
    # _ssl applies its context per SSL_CTX up to 3.12 and per SSL since 3.13.
    assert proven.applied_to == ("SSL" if sys.version_info >= (3, 13) else "SSL_CTX")
    assert hz.cpython_ssl() == hz.CPythonSSL(proven.python_session_id_context,
                                             proven.applied_to)


# -- an unknown CPython installs through the proof -----------------------------------

@pytest.mark.parametrize("proof_version", [None, ssl.TLSVersion.TLSv1_2],
                         ids=["proof-default", "proof-tls12"])
@pytest.mark.parametrize("accelerate", [True, False], ids=["c-callback", "python-callback"])
def test_unknown_python_installs_and_resumes(unknown_python: None, certs: Certs,
                                             store: MemoryStore, accelerate: bool,
                                             proof_version: ssl.TLSVersion | None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proof, "MAXIMUM_VERSION", proof_version)
    assert (3, 10) not in hz.CPYTHON_SSL and not proof._PROVEN
    ctx = server_context(certs)
    try:
        handle = stek.install(ctx, store, accelerate=accelerate)
    except BindingError as exc:
        if accelerate and "compiled" in str(exc):
            pytest.skip("stek.hazmat._fastcb is not built")
        raise
    assert isinstance(proof._PROVEN[id(hz.libssl())], proof.Binding)  # the proof ran
    assert handle.accelerated is accelerate
    with TLSServer(ctx) as srv:
        assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 2) == 2
        assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_3), 2) == 2
        assert not srv.errors
    assert handle.counters.resumed == 4
    handle.uninstall()


_UNKNOWN_SERVER = textwrap.dedent("""\
    import os, runpy, sys
    import stek.hazmat.libssl as hz
    from stek.hazmat.proof import binding
    hz.CPYTHON_SSL.clear()
    proven = binding(hz.libssl())
    print("proven", proven.applied_to, flush=True)
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python SCRIPT` puts its folder
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


@TLS_VERSIONS
def test_unknown_python_resumes_across_processes(certs: Certs, tmp_path: Path,
                                                 tls_version: ssl.TLSVersion) -> None:
    """Two server processes, each proving its own binding, one file store."""
    url = f"file:{tmp_path}/ring.json"
    with contextlib.ExitStack() as stack:
        ports = []
        for label in ("a", "b"):
            cmd = [sys.executable, "-c", _UNKNOWN_SERVER, str(APPS / "stek_server.py"),
                   str(certs.cert), str(certs.key), url, "rotate"]
            proc = stack.enter_context(running(cmd, tmp_path / f"server-{label}.log",
                                               env=env_with()))
            proc.wait_output(r"proven (SSL_CTX|SSL)\b")
            ports.append(int(proc.wait_output(r"ready (\d+)")[0]))
        cctx = client_context(certs, tls_version)
        first = line_request(ports[0], cctx)
        on_b = line_request(ports[1], cctx, first.session)
        back = line_request(ports[0], cctx, on_b.session)
    assert not first.reused and on_b.reused and back.reused
    assert first.body["pid"] != on_b.body["pid"]
    assert on_b.body["counters"]["resumed"] == 1


@pytest.mark.servers
@TLS_VERSIONS
def test_unknown_python_joins_an_nginx_fleet(unknown_python: None, certs: Certs,
                                             tmp_path: Path,
                                             tls_version: ssl.TLSVersion) -> None:
    store, now = live_store(tmp_path)
    ring = store.read()
    sid = nginx_session_id_context(certs.cert)
    sctx = server_context(certs)
    handle = stek.install(sctx, store, session_id_context=sid)
    assert handle.session_id_context == sid
    export("nginx", ring, now, tmp_path / "nginx-keys")
    cctx = client_context(certs, tls_version)
    with nginx(tmp_path, certs, tmp_path / "nginx-keys" / "tickets.conf") as srv, \
            TLSServer(sctx) as py:
        theirs = get(srv.port, cctx)
        on_python = connect(py.port, cctx, theirs.session)
        ours = connect(py.port, cctx)
        on_nginx = get(srv.port, cctx, ours.session)
        assert not py.errors
    assert on_python.reused, "the Python server must resume nginx's ticket"
    assert on_nginx.reused, "nginx must resume the Python server's ticket"
    assert handle.counters.resumed == 1
    handle.uninstall()


# -- the proof fails: one line, no crash, nothing installed ---------------------------

def test_wrong_pointer_is_refused_before_use(unknown_python: None, certs: Certs,
                                             store: MemoryStore,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The next field of PySSLContext: a pointer, but not the SSL_CTX.
    monkeypatch.setitem(proof.OFFSETS, "ctx", proof.POINTER_OFFSET + 8)
    ctx = server_context(certs)
    with pytest.raises(BindingError) as exc:
        stek.install(ctx, store)
    wrong = proof.POINTER_OFFSET + 8
    assert f"SSL_CTX * read from ssl.SSLContext at offset {wrong} is not" in _refusal(exc)
    assert getattr(ctx, "_stek_installation", None) is None
    # Refused again, from the recorded outcome, and the same line.
    with pytest.raises(BindingError, match=f"offset {wrong} is not"):
        stek.install(ctx, store)


_WILD = textwrap.dedent("""\
    import ssl, sys
    import stek
    from stek.hazmat import proof
    from stek.stores.memory import MemoryStore
    real = proof.read_word
    # A pointer that crashes whoever dereferences it.
    proof.read_word = lambda obj, off: 0x10 if isinstance(obj, ssl.SSLContext) \\
        else real(obj, off)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    store = MemoryStore()
    stek.init_ring(store, stek.Policy())
    try:
        stek.install(ctx, store)
    except stek.BindingError as exc:
        print(exc)
        sys.exit(1)
    print("installed")
""")


def test_wild_pointer_is_never_dereferenced(certs: Certs) -> None:
    """In a child process: a dereference of 0x10 would kill it with SIGSEGV."""
    out = subprocess.run([sys.executable, "-c", _WILD, str(certs.cert), str(certs.key)],
                         capture_output=True, text=True, timeout=120, env=env_with())
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert out.stdout.splitlines() == [
        "the binding proof failed: the SSL_CTX * read from ssl.SSLContext at offset "
        f"{proof.POINTER_OFFSET} is not the SSL_CTX OpenSSL made for it"]


def test_callback_never_invoked_is_refused(unknown_python: None, certs: Certs,
                                           store: MemoryStore,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lib = hz.libssl()
    monkeypatch.setattr(lib, "set_ticket_callback", lambda ctx_ptr, callback: None)
    ctx = server_context(certs)
    with pytest.raises(BindingError) as exc:
        stek.install(ctx, store)
    assert _refusal(exc) == ("the binding proof failed: the ticket key callback was never "
                             "invoked to seal a ticket")
    assert getattr(ctx, "_stek_installation", None) is None


def test_client_hello_callback_never_invoked_is_refused(unknown_python: None, certs: Certs,
                                                   store: MemoryStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lib = hz.libssl()
    monkeypatch.setattr(lib, "set_client_hello_callback", lambda ctx_ptr, cb, arg=None: None)
    with pytest.raises(BindingError) as exc:
        stek.install(server_context(certs), store)
    assert "the ClientHello callback was invoked 0 times" in _refusal(exc)


def test_session_pointer_not_found_refuses_only_reading_sessions(
        unknown_python: None, certs: Certs, store: MemoryStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(proof.OFFSETS, "session", proof.POINTER_OFFSET + 8)
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    with TLSServer(ctx) as srv:
        session = connect(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2)).session
    assert session is not None
    with pytest.raises(BindingError, match=r"SSL_SESSION inside ssl\.SSLSession"):
        hz.libssl().session_ticket(session)
    handle.uninstall()


def test_free_threaded_build_is_refused(unknown_python: None, certs: Certs,
                                        store: MemoryStore,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proof, "free_threaded", lambda: True)
    with pytest.raises(BindingError) as exc:
        stek.install(server_context(certs), store)
    assert "free-threaded CPython build" in _refusal(exc)


def test_handshake_error_in_the_proof_is_one_line(unknown_python: None, certs: Certs,
                                                  store: MemoryStore, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(proof, "_ephemeral_cert", lambda directory: str(junk))
    ctx = server_context(certs)
    with pytest.raises(BindingError) as exc:
        stek.install(ctx, store)
    assert _refusal(exc).startswith("the binding proof failed: its in-memory handshake "
                                    "raised SSLError: ")
    assert getattr(ctx, "_stek_installation", None) is None


def test_session_id_context_never_taken_is_refused(unknown_python: None, certs: Certs,
                                                   store: MemoryStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lib = hz.libssl()
    monkeypatch.setattr(lib, "SSL_set_session_id_context", lambda s, sid, n: 1)
    with pytest.raises(BindingError) as exc:
        stek.install(server_context(certs), store)
    assert _refusal(exc) == ("the binding proof failed: the session id context set from the "
                             "ClientHello callback is not the one the session was made in")
