"""stek.install() on a real Python ssl server: resumption, renewal, failures.

Every resumption here is a real TLS handshake on 127.0.0.1, with Python's
ssl client or ``openssl s_client``, and the installation's counters prove
that stek's callback (not OpenSSL's built-in key) handled the ticket.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from pathlib import Path

import pytest

import stek
from helpers import installed_servers
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.installed_servers import key_at, write_ring
from helpers.tls_peers import TLSServer, connect, reconnects, s_client, s_client_reused
from helpers.waiting import wait_until, wait_watching
from stek.hazmat.libssl import libssl
from stek.keys import TicketKey
from stek.schedule import Policy
from stek.stores import FileStore

# Fixtures shared with the other half of these tests (tests/unit or tests/integration).
callback_impl = installed_servers.callback_impl
server = installed_servers.server
store = installed_servers.store


@TLS_VERSIONS
def test_openssl_s_client_resumes(server, certs: Certs, tls_version: ssl.TLSVersion,
                                  tmp_path: Path) -> None:
    srv, handle = server
    sess = tmp_path / "sess.pem"
    first = s_client(srv.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
    assert "New, TLSv1." in first and not s_client_reused(first)
    second = s_client(srv.port, tls_version, tmp_path, sess_in=sess, ca=certs.ca)
    assert s_client_reused(second), second[-2000:]
    assert handle.counters.resumed == 1


def test_rotate_true_rotates_when_due(certs: Certs, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "r.json")
    stek.init_ring(store, Policy(rotate_every=2, accept_for=4, publish_ahead=1))
    handle = stek.install(server_context(certs), store, rotate=True)
    first = {k.name for k in handle.ring}
    # The first rotation falls due within rotate_every (2 s) of init.
    wait_until(lambda: bool({k.name for k in handle.ring} - first), timeout=10)
    assert {k.name for k in handle.ring} - first
    assert {k.name for k in store.read()} == {k.name for k in handle.ring}



def test_forked_child_keeps_following_the_ring(certs: Certs, store: FileStore) -> None:
    """Installed before fork() (a pre-fork server): the child still refreshes and serves."""
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    gen = handle.ring.generation
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        try:
            os.close(r)
            os.close(ready_r)
            # Its own watch (the parent's is not inherited) before the parent writes.
            wait_watching(handle, timeout=10)
            os.write(ready_w, b"w")
            deadline = time.time() + 10
            while handle.ring.generation == gen and time.time() < deadline:
                time.sleep(0.02)
            seen = handle.ring.generation != gen and handle.installed
            with TLSServer(ctx) as srv:
                resumed = reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 2)
            os.write(w, f"{int(seen)} {resumed} {handle.counters.resumed}".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        assert ready.read(1) == b"w", "the child never watched the store"
    now = time.time()
    write_ring(store, key_at(now - 1, now + 1000, now + 2000))
    with os.fdopen(r) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert report == "1 2 2"


def test_tls12_renewal_does_not_extend_the_session_lifetime(certs: Certs,
                                                            store: FileStore) -> None:
    """s2n #5147: a ticket re-issued on resumption keeps the original session's
    creation time and timeout, so OpenSSL still refuses the session once
    ``created_at + accept_for`` has passed, however often it is renewed."""
    from stek.session import decode
    from stek.ticket import open_ticket

    now = time.time()
    old = key_at(now - 100, now + 1000, now + 2000)
    write_ring(store, old)
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    with TLSServer(ctx) as srv:
        first = connect(srv.port, cctx)
        time.sleep(1.1)  # so a fresh session would carry a later time
        new = key_at(now - 10, now + 1000, now + 2000)
        write_ring(store, TicketKey(old.name, old.aes_key, old.hmac_key, int(now - 100),
                                    int(now - 10), int(now + 2000)), new)
        handle.refresh()
        second = connect(srv.port, cctx, first.session)
    assert second.reused and handle.counters.renewed == 1
    ring = handle.ring
    assert first.session is not None and second.session is not None
    before = decode(open_ticket(libssl().session_ticket(first.session), ring).state)
    after_ticket = open_ticket(libssl().session_ticket(second.session), ring)
    after = decode(after_ticket.state)
    assert after_ticket.key.name == new.name
    assert (after.created_at, after.timeout) == (before.created_at, before.timeout)
    assert after.timeout == ring.policy.accept_for


@TLS_VERSIONS
def test_renewals_never_extend_a_session_past_accept_for(
        certs: Certs, tmp_path: Path, tls_version: ssl.TLSVersion) -> None:
    """OpenSSL stamps every TLS 1.3 ticket with a fresh time, so a client resuming
    often could chain one session for ever.  stek carries the full handshake's
    time inside the ticket and refuses sessions older than accept_for (TLS 1.2
    gets the same answer from OpenSSL's own timeout)."""
    store = FileStore(tmp_path / "ring.json")
    # accept_for 4s; instants are whole seconds, so keep a second of margin.
    # publish_ahead 10s: keys cover the whole test, whatever the slot boundary.
    stek.init_ring(store, Policy(rotate_every=60, accept_for=4, publish_ahead=10))
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, tls_version)
    with TLSServer(ctx) as srv:
        born = time.time()
        session = connect(srv.port, cctx).session
        while time.time() < born + 2.0:  # a chain of resumptions, each renewing
            r = connect(srv.port, cctx, session)
            assert r.reused
            session = r.session
            time.sleep(0.5)
        time.sleep(max(0.0, born + 4.6 - time.time()))
        late = connect(srv.port, cctx, session)
        assert not late.reused  # its ticket is fresh, its session is not
        assert connect(srv.port, cctx, late.session).reused  # a new session starts over
        assert srv.errors == []
    if tls_version == ssl.TLSVersion.TLSv1_3:
        assert handle.counters.rejected_too_old == 1
    assert handle.counters.errors == 0


@TLS_VERSIONS
def test_renewed_tickets_carry_the_full_handshakes_time(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion) -> None:
    from stek.session import decode
    from stek.ticket import open_ticket

    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, tls_version)
    with TLSServer(ctx) as srv:
        first = connect(srv.port, cctx)
        time.sleep(1.1)
        second = connect(srv.port, cctx, first.session)
    assert second.reused and first.session is not None and second.session is not None
    a = decode(open_ticket(libssl().session_ticket(first.session), handle.ring).state)
    b = decode(open_ticket(libssl().session_ticket(second.session), handle.ring).state)
    assert a.born_at == a.created_at and a.ticket_appdata_len == 12
    assert b.born_at == a.born_at
    if tls_version == ssl.TLSVersion.TLSv1_3:
        assert b.created_at > a.created_at  # OpenSSL's fresh time; stek's birth stays


# -- the session's birth: unsigned 64 bits, the same answer in both callbacks ---------

@pytest.mark.parametrize("born", [2**63, 2**63 + 5, 2**64 - 1, 2**63 - 1],
                         ids=["2^63", "2^63+5", "2^64-1", "2^63-1"])
def test_ticket_born_in_the_far_future_gets_the_python_rules_answer(
        certs: Certs, store: FileStore, tmp_path: Path, born: int) -> None:
    """A birth at or past 2^63 used to read as negative in C (a refusal) and to
    overflow ``born + max_age``, while the Python callback read it unsigned and
    resumed.  Both now give stek.schedule.decrypted_ticket_answer's answer:
    a birth in the future is not too old, so the session resumes."""
    from stek import session as sessions
    from stek.session import _SessionASN1, encode_birth
    from stek.ticket import open_ticket, seal

    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    v = ssl.TLSVersion.TLSv1_2
    with TLSServer(ctx) as srv:
        sess = tmp_path / "real.pem"
        s_client(srv.port, v, tmp_path, sess_out=sess, ca=certs.ca)
        der = sessions.from_pem(sess.read_text())
        opened = open_ticket(sessions.ticket(der) or b"", handle.ring)
        state = _SessionASN1.load(opened.state)
        state["ticket_appdata"] = encode_birth(born)
        ticket = seal(opened.key, bytes(state.dump(force=True)))
        crafted = tmp_path / "crafted.pem"
        crafted.write_text(sessions.to_pem(sessions.replace(der, ticket=ticket,
                                                            session_id=os.urandom(32))))
        out = s_client(srv.port, v, tmp_path, sess_in=crafted, ca=certs.ca)
        assert srv.errors == []
    assert s_client_reused(out), out
    c = handle.counters
    assert c.resumed == 1 and c.rejected_too_old == 0 and c.errors == 0


# -- counters: only real resumptions ------------------------------------------------

@TLS_VERSIONS
def test_forged_ticket_under_a_live_key_name_is_not_counted_as_resumed(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, tmp_path: Path) -> None:
    from stek import session as sessions

    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    with TLSServer(ctx) as srv:
        sess = tmp_path / "real.pem"
        s_client(srv.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
        der = sessions.from_pem(sess.read_text())
        real = sessions.ticket(der) or b""
        forged = real[:-1] + bytes([real[-1] ^ 1])  # the MAC no longer matches
        crafted = tmp_path / "forged.pem"
        crafted.write_text(sessions.to_pem(sessions.replace(der, ticket=forged,
                                                            session_id=os.urandom(32))))
        out = s_client(srv.port, tls_version, tmp_path, sess_in=crafted, ca=certs.ca)
        again = s_client(srv.port, tls_version, tmp_path, sess_in=sess, ca=certs.ca)
    assert not s_client_reused(out) and s_client_reused(again)
    c = handle.counters
    assert c.accepted_by_name == 2 and c.resumed == 1


# -- lifetime: the callback lives as long as OpenSSL's SSL_CTX ----------------------

_SNI_CHILD = r"""
import gc, json, ssl, sys, weakref
import stek
from stek.hazmat.libssl import libssl
from stek.installation import _PINNED, accelerated_available
from stek.stores import FileStore

cert, key, ca, ring_a, ring_b, accelerate, version = sys.argv[1:]
accelerate = accelerate == "1"
version = ssl.TLSVersion[version]

def server_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx

ctx1 = server_ctx()
stek.install(ctx1, FileStore(ring_a), accelerate=accelerate)  # the handle is dropped
ctx1_ptr = libssl().ssl_ctx_pointer(ctx1)
ctx1_ref = weakref.ref(ctx1)
ctx2 = server_ctx()  # what the SNI callback switches to: no stek on it

def switch(sslobj, name, ctx):
    sslobj.context = ctx2

ctx1.sni_callback = switch
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
cctx.load_verify_locations(ca)
cctx.minimum_version = cctx.maximum_version = version
s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
server = ctx1.wrap_bio(s_in, s_out, server_side=True)
client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")

def step(obj):
    try:
        obj.do_handshake()
        return True
    except ssl.SSLWantReadError:
        return False

def pump():
    s_in.write(c_out.read())
    done_s = step(server)
    c_in.write(s_out.read())
    return done_s

step(client)          # ClientHello
pump()                # the server: SNI switches to ctx2; ServerHello... (no ticket yet)
assert server.context is ctx2
# Mid-handshake: the first SSLContext goes away, another installation takes its place.
del ctx1
gc.collect()
collected_before_ctx3 = ctx1_ref() is None  # else the bug is not exercised
ctx3 = server_ctx()
h3 = stek.install(ctx3, FileStore(ring_b), accelerate=accelerate)
for _ in range(4):    # the client's Finished; the server seals the ticket now
    done_c = step(client)
    if pump() and done_c:
        break
try:
    client.read(1)    # TLS 1.3: process the NewSessionTicket
except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
    pass
name = libssl().session_ticket(client.session)[:16].hex()
pinned_during = ctx1_ptr in _PINNED
from stek.hazmat import _fastcb
in_use_during = _fastcb.in_use()
del server, client
gc.collect()
print(json.dumps({"name": name, "accel": h3.accelerated, "pinned_during": pinned_during,
                  "collected_before_ctx3": collected_before_ctx3,
                  "pinned_after": ctx1_ptr in _PINNED, "in_use_during": in_use_during,
                  "in_use_after": _fastcb.in_use()}))
"""


@TLS_VERSIONS
def test_first_context_collected_mid_handshake_after_sni_switch(
        certs: Certs, tmp_path: Path, callback_impl: bool, tls_version: ssl.TLSVersion) -> None:
    """OpenSSL seals the ticket with the first SSL_CTX's callback even after an SNI
    callback switched contexts and the first SSLContext was collected.  Before:
    the compiled callback sealed it with the ring of whichever installation
    reused its slot; the Python one called a freed ctypes thunk (SIGSEGV).  Run
    in a subprocess, so a crash fails this test and not the suite."""
    import json
    import subprocess

    stores = []
    for name in ("a", "b"):
        st = FileStore(tmp_path / f"{name}.json")
        stek.init_ring(st, Policy())
        stores.append(st)
    proc = subprocess.run(
        [sys.executable, "-c", _SNI_CHILD, str(certs.cert), str(certs.key), str(certs.ca),
         str(stores[0].path), str(stores[1].path), "1" if callback_impl else "0",
         tls_version.name],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["accel"] is callback_impl
    # The first SSLContext really was gone before the next installation came.
    assert out["collected_before_ctx3"] is True
    ring_a = {k.name.hex() for k in stores[0].read()}
    ring_b = {k.name.hex() for k in stores[1].read()}
    assert out["name"] in ring_a, "the ticket must be sealed under the first context's ring"
    assert out["name"] not in ring_b
    if callback_impl:
        # The first context's slot stayed taken while OpenSSL held its SSL_CTX,
        # and was freed with it.
        assert out["in_use_during"] == out["in_use_after"] + 1
    else:
        assert out["pinned_during"] and not out["pinned_after"]
