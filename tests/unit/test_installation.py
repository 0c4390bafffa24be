"""stek.install() on a real Python ssl server: resumption, renewal, failures.

Every resumption here is a real TLS handshake on 127.0.0.1, with Python's
ssl client or ``openssl s_client``, and the installation's counters prove
that stek's callback (not OpenSSL's built-in key) handled the ticket.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stek
from helpers import installed_servers
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.installed_servers import key_at, write_ring
from helpers.tls_peers import TLSServer, connect, reconnects
from helpers.waiting import wait_until, wait_watching, watching
from stek._reactor import collection_paused
from stek.errors import BindingError, NotInitialized, StoreCorrupt
from stek.hazmat.libssl import libssl
from stek.hazmat.proof import binding
from stek.keys import TicketKey
from stek.schedule import Policy
from stek.stores import FileStore
from stek.stores.memory import MemoryStore

# Fixtures shared with the other half of these tests (tests/unit or tests/integration).
callback_impl = installed_servers.callback_impl
server = installed_servers.server
store = installed_servers.store


def ticket_name(session: ssl.SSLSession | None) -> bytes:
    assert session is not None
    return libssl().session_ticket(session)[:16]


# -- resumption ---------------------------------------------------------------------

@TLS_VERSIONS
def test_python_client_resumes_and_callback_ran(server, certs: Certs, callback_impl: bool,
                                                tls_version: ssl.TLSVersion) -> None:
    srv, handle = server
    assert handle.accelerated is callback_impl
    resumed = reconnects(srv.port, client_context(certs, tls_version), 10)
    assert resumed == 10
    c = handle.counters
    assert c.resumed == 10
    # TLS 1.2 keeps its ticket (answer 1); TLS 1.3 gets 2 on the full handshake
    # and a fresh one on every resumption (answer 2).
    assert c.issued == (12 if tls_version == ssl.TLSVersion.TLSv1_3 else 1)
    assert c.errors == 0 and c.rejected_unknown == 0


@TLS_VERSIONS
def test_tickets_carry_the_active_key_name(server, certs: Certs,
                                           tls_version: ssl.TLSVersion) -> None:
    srv, handle = server
    r = connect(srv.port, client_context(certs, tls_version))
    assert ticket_name(r.session) == handle.ring.encrypting_key(time.time()).name


@TLS_VERSIONS
def test_tls13_resumption_always_renews_and_tls12_does_not(
        server, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    srv, handle = server
    reconnects(srv.port, client_context(certs, tls_version), 3)
    expected = 3 if tls_version == ssl.TLSVersion.TLSv1_3 else 0
    assert handle.counters.renewed == expected


def test_many_threads_resume_concurrently(server, certs: Certs) -> None:
    srv, handle = server
    results: list[int] = []

    def client() -> None:
        results.append(reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 10))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [10] * 8
    assert handle.counters.errors == 0


# -- the lifecycle, with real tickets ------------------------------------------------

@TLS_VERSIONS
def test_decrypt_only_ticket_resumes_and_is_reissued_under_active_key(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion) -> None:
    now = time.time()
    old = key_at(now - 100, now + 1000, now + 2000)
    write_ring(store, old)
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, tls_version)
    with TLSServer(ctx) as srv:
        first = connect(srv.port, cctx)
        assert ticket_name(first.session) == old.name
        new = key_at(now - 10, now + 1000, now + 2000)
        retired = TicketKey(old.name, old.aes_key, old.hmac_key, int(now - 100), int(now - 10),
                            int(now + 2000))
        write_ring(store, retired, new)
        handle.refresh()
        second = connect(srv.port, cctx, first.session)
        assert second.reused
        assert ticket_name(second.session) == new.name
        assert handle.counters.renewed == 1
        third = connect(srv.port, cctx, second.session)
        assert third.reused
        assert srv.errors == []


@TLS_VERSIONS
@pytest.mark.parametrize("fate", ["expired", "dropped"])
def test_expired_or_unknown_key_gets_full_handshake_and_new_ticket(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, fate: str) -> None:
    now = time.time()
    old = key_at(now - 100, now + 1000, now + 2000)
    write_ring(store, old)
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, tls_version)
    with TLSServer(ctx) as srv:
        first = connect(srv.port, cctx)
        new = key_at(now - 10, now + 1000, now + 2000)
        if fate == "expired":  # still in the snapshot, but past expires_at
            dead = TicketKey(old.name, old.aes_key, old.hmac_key, int(now - 300),
                             int(now - 200), int(now - 1))
            write_ring(store, dead, new)
        else:
            write_ring(store, new)
        handle.refresh()
        second = connect(srv.port, cctx, first.session)
        assert not second.reused
        assert ticket_name(second.session) == new.name
        c = handle.counters
        if fate == "expired":
            assert c.rejected_expired == 1
        else:
            assert c.rejected_unknown == 1
        assert connect(srv.port, cctx, second.session).reused
        assert srv.errors == []


@TLS_VERSIONS
def test_pre_published_keys_ticket_resumes(certs: Certs, store: FileStore,
                                           tls_version: ssl.TLSVersion) -> None:
    """A host whose clock is ahead already encrypts with the next key."""
    now = time.time()
    nxt = key_at(now - 5, now + 3000, now + 4000)
    write_ring(store, nxt)
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, tls_version)
    with TLSServer(ctx) as srv:
        first = connect(srv.port, cctx)
        assert ticket_name(first.session) == nxt.name
        current = key_at(now - 100, now + 500, now + 1500)
        pending = TicketKey(nxt.name, nxt.aes_key, nxt.hmac_key, int(now + 500),
                            int(now + 3000), int(now + 4000))
        write_ring(store, current, pending)
        handle.refresh()
        second = connect(srv.port, cctx, first.session)
        assert second.reused
        assert handle.counters.resumed == 1


@TLS_VERSIONS
def test_no_active_key_still_handshakes_but_issues_no_ticket(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion) -> None:
    now = time.time()
    write_ring(store, key_at(now - 300, now - 100, now + 1000),
               key_at(now + 500, now + 1000, now + 2000))
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    with TLSServer(ctx) as srv:
        for _ in range(3):
            r = connect(srv.port, client_context(certs, tls_version))
            assert r.session is None or libssl().session_ticket(r.session) == b""
        assert srv.errors == []
        assert srv.handshakes == 3
    c = handle.counters
    assert c.issued == 0 and c.no_active_key >= 3


@TLS_VERSIONS
def test_all_keys_expired_does_not_break_handshakes(certs: Certs, tls_version: ssl.TLSVersion,
                                                    tmp_path: Path) -> None:
    now = time.time()
    store = FileStore(tmp_path / "ring.json")
    write_ring(store, key_at(now - 300, now - 200, now - 100))
    ctx = server_context(certs)
    stek.install(ctx, store)
    with TLSServer(ctx) as srv:
        r = connect(srv.port, client_context(certs, tls_version))
        assert r.version is not None
        assert srv.errors == []


@TLS_VERSIONS
def test_resumed_session_keeps_the_client_certificate(certs: Certs, store: FileStore,
                                                      tls_version: ssl.TLSVersion) -> None:
    ctx = server_context(certs)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(certs.ca)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, tls_version)
    cctx.load_cert_chain(certs.client_cert, certs.client_key)
    with TLSServer(ctx) as srv:
        first = connect(srv.port, cctx)
        second = connect(srv.port, cctx, first.session)
        assert second.reused
        deadline = time.time() + 5
        while len(srv.peercerts) < 2 and time.time() < deadline:
            time.sleep(0.01)
        assert srv.errors == []
    assert handle.counters.resumed == 1
    full, resumed = srv.peercerts[0], srv.peercerts[1]
    assert resumed, "getpeercert() on the resumed connection is empty"
    assert resumed["subject"] == full["subject"] == ((("commonName", "stek client"),),)


# -- the snapshot --------------------------------------------------------------------

def test_rotation_by_another_process_is_seen_within_a_second(certs: Certs,
                                                              store: FileStore) -> None:
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    gen = handle.ring.generation
    wait_watching(handle)
    now = time.time()
    fresh = key_at(now - 1, now + 1000, now + 2000)
    write_ring(FileStore(store.path), fresh)
    start = time.monotonic()
    while handle.ring.generation == gen and time.monotonic() - start < 2:
        time.sleep(0.02)
    assert time.monotonic() - start < 1.0
    with TLSServer(ctx) as srv:
        r = connect(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2))
    assert ticket_name(r.session) == fresh.name


def test_corrupt_file_keeps_server_serving_and_file_untouched(
        certs: Certs, store: FileStore, caplog: pytest.LogCaptureFixture) -> None:
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    with TLSServer(ctx) as srv:
        first = connect(srv.port, cctx)
        store.path.write_bytes(b"{ not a keyring")
        before = store.path.read_bytes()
        with pytest.raises(StoreCorrupt):
            handle.refresh()
        with caplog.at_level(logging.WARNING, logger="stek.installation"):
            # The watch announces the write; the group's re-read fails and says so.
            wait_until(lambda: any("serving the last snapshot" in r.getMessage()
                                   for r in list(caplog.records)), timeout=10)
        assert connect(srv.port, cctx, first.session).reused
        assert srv.errors == []
    assert store.path.read_bytes() == before
    assert any("serving the last snapshot" in r.getMessage() for r in caplog.records)


@TLS_VERSIONS
def test_lifetime_hint_matches_accept_for(certs: Certs, tmp_path: Path,
                                          tls_version: ssl.TLSVersion) -> None:
    """The hint never promises more than the ring will accept (s2n #4583)."""
    store = FileStore(tmp_path / "r.json")
    stek.init_ring(store, Policy(rotate_every=600, accept_for=1800, publish_ahead=60))
    ctx = server_context(certs)
    stek.install(ctx, store)
    lib = libssl()
    assert lib.SSL_CTX_get_timeout(lib.ssl_ctx_pointer(ctx)) == 1800
    with TLSServer(ctx) as srv:
        r = connect(srv.port, client_context(certs, tls_version))
    # RFC 5077 3.3 ticket_lifetime_hint / RFC 8446 4.6.1 ticket_lifetime.
    assert r.session is not None and r.session.ticket_lifetime_hint == 1800


def test_48_byte_ring_resumes(certs: Certs, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "r.json")
    stek.init_ring(store, Policy(key_size=48))
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    with TLSServer(ctx) as srv:
        assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 3) == 3
    assert handle.counters.resumed == 3


# -- installation errors and lifetime ------------------------------------------------

def test_client_context_is_refused(store: FileStore) -> None:
    with pytest.raises(BindingError, match="client-side"):
        stek.install(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), store)


def test_op_no_ticket_is_refused(certs: Certs, store: FileStore) -> None:
    ctx = server_context(certs)
    ctx.options |= ssl.OP_NO_TICKET
    with pytest.raises(BindingError, match="OP_NO_TICKET"):
        stek.install(ctx, store)


def test_non_context_is_refused(store: FileStore) -> None:
    with pytest.raises(BindingError, match="SSLContext"):
        stek.install(object(), store)  # type: ignore[arg-type]


def test_double_install_is_refused(certs: Certs, store: FileStore) -> None:
    ctx = server_context(certs)
    stek.install(ctx, store)
    with pytest.raises(BindingError, match="already installed"):
        stek.install(ctx, store)


def test_unreachable_libssl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import _ssl

    from stek.hazmat import libssl as hz

    monkeypatch.delattr(_ssl, "__file__")
    with pytest.raises(BindingError, match="statically linked"):
        hz.LibSSL()


def test_empty_store_without_rotate_says_what_to_do(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(NotInitialized, match="rotate=True"):
        stek.install(server_context(certs), f"file:{tmp_path / 'none.json'}", strict=True)


def test_rotate_true_creates_the_ring(certs: Certs, tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    handle = stek.install(server_context(certs), f"file:{path}", rotate=True,
                          policy=Policy(rotate_every=1800))
    assert path.exists()
    assert handle.ring.policy.rotate_every == 1800
    assert handle.ring.encrypting_key(time.time()) is not None


def test_uninstall_restores_openssl_builtin_keys(certs: Certs, store: FileStore) -> None:
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    handle.uninstall()
    assert not handle.installed
    with TLSServer(ctx) as srv:
        r = connect(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2))
    assert ticket_name(r.session) not in {k.name for k in store.read()}
    assert handle.counters.issued == 0
    again = stek.install(ctx, store)  # can be installed again
    with TLSServer(ctx) as srv:
        assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 2) == 2
    assert again.counters.resumed == 2
    again.uninstall()
    assert again.counters.resumed == 2  # counters survive uninstall


def test_installation_dies_with_its_context(certs: Certs) -> None:
    """The callback lives exactly as long as the context; then its store watch
    and timers stop.  They are stopped by stek's background thread, not in the
    finalizer: a collection runs finalizers in whatever thread it starts in (an
    event loop, a thread inside stek holding one of its locks), and closing a
    watch can talk to the store and wait for the watch's thread.  Before, the
    finalizer closed the watch itself, in the collecting thread."""
    from stek import _refresh

    closed_in: list[str] = []

    class Recording(MemoryStore):
        def subscribe(self, on_change: Callable[[], None]) -> Any:
            sub = super().subscribe(on_change)

            class Closing:
                def close(self) -> None:
                    closed_in.append(threading.current_thread().name)
                    sub.close()

            return Closing()

    store = Recording()
    stek.init_ring(store, Policy())
    ctx = server_context(certs)
    thread = stek.install(ctx, store)._thread
    assert len(store._subs) == 1 and thread is not None and thread.is_alive()
    del ctx
    gc.collect()
    gc.collect()  # the Python callback's thunks go with the SSL_CTX, its installation next
    deadline = time.monotonic() + 5
    while store._subs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store._subs == []
    assert closed_in == ["stek-background"]
    assert all(g.store is not store for g in _refresh._GROUPS.values())


class Owner:
    """An application object that uninstalls its context when it is collected."""

    def __init__(self, handle: stek.Installation) -> None:
        self.handle = handle
        self.cycle = self  # only a collection frees it

    def __del__(self) -> None:
        self.handle.uninstall()


def test_a_collection_inside_the_file_watch_waits_for_it(certs: Certs, tmp_path: Path) -> None:
    """A garbage collection can run an application's finalizer that uninstalls
    in a thread that is inside the file watch (stek.stores._filewatch), and the
    uninstall closes a subscription.  Before: that nested close changed the
    watch under the call it interrupted, and uninstall() raised "Set changed
    size during iteration" (seen in CI, from an installation's own finalizer,
    which now closes from the background thread).  Now the nested close waits
    until that call ends.  The probe below runs the collection at the point
    where CI's ran: while uninstall() walks the watch's subscriptions."""
    from stek.stores import _filewatch

    hub = _filewatch._HUB
    stores = [FileStore(tmp_path / f"{n}.json") for n in ("kept", "garbage")]
    for st in stores:
        stek.init_ring(st, Policy())
    kept = stek.install(server_context(certs), stores[0])
    owned = stek.install(server_context(certs), stores[1])
    garbage_sub = next(s for s in list(hub._subs) if s.path == stores[1].path)
    seen: dict[str, bool] = {}

    class Probe:
        """In the watch's set of subscriptions: reading ``wd`` collects garbage."""

        path = tmp_path / "probe"

        @property
        def wd(self) -> int:
            if not seen:
                gc.collect()
                seen["collected"] = not owned.installed
                seen["watch_unchanged"] = garbage_sub in hub._subs
            return -1  # never polled, never in an inotify watch

    probe = Probe()
    with hub._serial.held():
        hub._subs.add(probe)  # type: ignore[arg-type]
    try:
        with collection_paused():  # collected only where the probe collects
            Owner(owned)
            assert owned.installed
            kept.uninstall()
    finally:
        with hub._serial.held():
            hub._subs.discard(probe)  # type: ignore[arg-type]
    assert seen == {"collected": True, "watch_unchanged": True}
    assert garbage_sub not in hub._subs  # closed once uninstall() had left the watch
    assert all(s.path not in {st.path for st in stores} for s in list(hub._subs))


def test_a_group_says_when_its_store_watch_is_in_place(certs: Certs, store: FileStore) -> None:
    """What a test waits on instead of sleeping (helpers.waiting.wait_watching): a
    file store's watch is in place once install() returns; a fleet store's once
    its WatchThread has subscribed (``connected``); none while it is being opened."""
    from stek._refresh import _OPENING

    handle = stek.install(server_context(certs), store)
    group = handle._membership.group
    assert group is not None and group.watching and watching(handle)

    class Watch:
        connected = threading.Event()

        def close(self) -> None:
            pass

    real = group.sub
    try:
        group.sub = Watch()
        assert not group.watching
        Watch.connected.set()
        assert group.watching
        group.sub = _OPENING
        assert not group.watching
        group.sub = None
        assert not group.watching
    finally:
        group.sub = real
    handle.uninstall()
    assert not watching(handle)


def test_a_collection_while_a_group_is_walked_skips_no_member(certs: Certs,
                                                              store: FileStore) -> None:
    """Installations on one store form a group (stek._refresh) that is walked to
    swap each new ring in.  A collection during the walk can run an
    application's finalizer that uninstalls a member.  Before: the walk was
    over the live list, so the member after the one that left was skipped and
    kept the old ring until the next refresh."""
    first = stek.install(server_context(certs), store)
    last = stek.install(server_context(certs), store)
    group = first._membership.group
    assert group is not None and group is last._membership.group

    class Probe:
        """A member between the two: asking for its installation collects garbage."""

        def target(self) -> None:
            gc.collect()

    group.members.insert(1, Probe())  # type: ignore[arg-type]
    try:
        with collection_paused():  # collected only where the probe collects
            Owner(first)  # garbage now; only the probe's collection runs its __del__
            assert first.installed
            live = group.live()
    finally:
        group.members = [m for m in group.members if not isinstance(m, Probe)]
    assert not first.installed  # the finalizer ran during the walk
    # The group sees each installation through an adapter (stek.installation._Member).
    assert last in [getattr(m, "inst", None) for m in live]
    last.uninstall()


def test_handle_repr_has_no_key_bytes(certs: Certs, store: FileStore) -> None:
    handle = stek.install(server_context(certs), store)
    text = repr(handle) + repr(handle.ring) + repr(handle.counters)
    for k in handle.ring:
        assert k.aes_key.hex() not in text and k.hmac_key.hex() not in text
    assert os.fspath(store.path) in text


# -- OpenSSL failures inside the callback: no ticket or a full handshake, never an abort --

_RAND = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_INIT = ctypes.CFUNCTYPE(ctypes.c_int, *([ctypes.c_void_p] * 5))
_SET_PARAMS = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_HMAC_INIT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                              ctypes.c_void_p, ctypes.c_void_p)
#: what fails -> (libssl function, C prototype, position in UNSAFE_TESTING_ONLY_swap_crypto).
#: "MAC init" is EVP_MAC_CTX_set_params on OpenSSL 3 (EVP_MAC-HMAC(7)), HMAC_Init_ex on 1.1.1.
_FAILABLE = {"RAND_bytes": ("RAND_bytes", _RAND, 0),
             "EVP_EncryptInit_ex": ("EVP_EncryptInit_ex", _INIT, 1),
             "EVP_DecryptInit_ex": ("EVP_DecryptInit_ex", _INIT, 2),
             "MAC init": ("EVP_MAC_CTX_set_params", _SET_PARAMS, 3) if libssl().openssl3
             else ("HMAC_Init_ex", _HMAC_INIT, 3)}


class Failing:
    """How many more calls of the swapped OpenSSL function fail (None: all of them);
    the others call the real function."""

    def __init__(self) -> None:
        self.left: int | None = None
        self.calls = 0


@contextlib.contextmanager
def openssl_failing(what: str, accelerated: bool,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[Failing]:
    """Make one OpenSSL function fail (return 0) inside stek's callbacks.

    The compiled callback's functions are swapped through its loud test-only
    hook; the Python callback takes them from the LibSSL object when it is
    installed, so install inside this block.  Set ``.left`` on the answer to
    fail only the next calls (a MAC init serves both sealing and opening)."""
    name, proto, pos = _FAILABLE[what]
    # The binding proof runs once per process, at its first install, with the
    # same LibSSL functions: were this that first install, the proof would
    # fail on the injected failure, and every later install in the process
    # (a pytest-xdist worker) would be refused with it.  Prove it first.
    binding(libssl())
    real = getattr(libssl(), name)
    state = Failing()

    def fake(*args: object) -> int:
        if state.left is None or state.left > 0:
            state.calls += 1
            state.left = None if state.left is None else state.left - 1
            return 0
        return int(real(*args))

    failing = proto(fake)
    if not accelerated:
        monkeypatch.setattr(libssl(), name, failing)
        yield state
        return
    from stek.hazmat import _fastcb  # type: ignore[attr-defined]
    from stek.installation import accelerated_available

    assert accelerated_available()  # initialized first, so init() does not undo the swap
    swap = [0, 0, 0, 0]
    swap[pos] = int(ctypes.cast(failing, ctypes.c_void_p).value or 0)
    old = _fastcb.UNSAFE_TESTING_ONLY_swap_crypto(*swap)
    try:
        yield state
    finally:
        _fastcb.UNSAFE_TESTING_ONLY_swap_crypto(*old)


@TLS_VERSIONS
@pytest.mark.parametrize("broken", ["RAND_bytes", "EVP_EncryptInit_ex", "MAC init"])
def test_openssl_failure_sealing_a_ticket_still_handshakes_without_one(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, broken: str,
        callback_impl: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the callback answered -1 and OpenSSL aborted the handshake."""
    ctx = server_context(certs)
    with openssl_failing(broken, callback_impl, monkeypatch) as failing:
        handle = stek.install(ctx, store)
        with TLSServer(ctx) as srv:
            r = connect(srv.port, client_context(certs, tls_version))
            assert srv.errors == [] and srv.handshakes == 1
    assert failing.calls >= 1  # the failure was really met
    assert r.version is not None
    c = handle.counters
    assert c.issued == 0 and c.errors >= 1, c
    assert r.session is None or libssl().session_ticket(r.session) == b""


@TLS_VERSIONS
@pytest.mark.parametrize("broken", ["EVP_DecryptInit_ex", "MAC init"])
def test_openssl_failure_opening_a_ticket_gives_a_full_handshake(
        certs: Certs, store: FileStore, tls_version: ssl.TLSVersion, broken: str,
        callback_impl: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = server_context(certs)
    cctx = client_context(certs, tls_version)
    with openssl_failing(broken, callback_impl, monkeypatch) as failing:
        handle = stek.install(ctx, store)
        with TLSServer(ctx) as srv:
            failing.left = 0  # the ticket is sealed normally ...
            first = connect(srv.port, cctx)
            assert ticket_name(first.session) == handle.ring.encrypting_key(time.time()).name
            issued = handle.counters.issued
            failing.left = 1  # ... and cannot be opened: the first call is the opening
            second = connect(srv.port, cctx, first.session)
            assert srv.errors == [] and srv.handshakes == 2
    assert failing.calls == 1
    assert not second.reused and second.version is not None
    c = handle.counters
    assert c.errors == 1 and c.resumed == 0 and c.accepted_by_name == 0
    assert c.issued > issued  # the full handshake ended with a fresh ticket
