"""Re-installing on one live SSLContext with the Python (ctypes) callbacks reuses
the callback set its SSL_CTX holds, instead of pinning one more set, and with it
the installation it served, per re-install (the compiled callback's slot:
tests/unit/test_fastcb_reinstall.py).  Handshakes are real, over memory BIOs."""

from __future__ import annotations

import gc
import ssl
import weakref

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.memory_tls import MemoryHandshake, handshake
from stek.hazmat.libssl import (
    ClientHelloCallback,
    DecTicketCallback,
    GenTicketCallback,
    TicketKeyCallback,
    libssl,
)
from stek.hazmat.proof import binding
from stek.installation import _PINNED
from stek.schedule import Policy
from stek.stores.memory import MemoryStore

#: The four callbacks an installation hands OpenSSL for one SSL_CTX.
CALLBACK_TYPES = (TicketKeyCallback, GenTicketCallback, DecTicketCallback, ClientHelloCallback)


class Thunks:
    """The ctypes callback objects made since this was created that are still
    alive.  Those alive before are held for as long, so that no new one can
    take the id of one that died meanwhile (other tests' contexts may still
    be going away)."""

    def __init__(self) -> None:
        self._before = self._all()
        self._ids = {id(o) for o in self._before}

    @staticmethod
    def _all() -> list[object]:
        gc.collect()
        return [o for o in gc.get_objects() if type(o) in CALLBACK_TYPES]

    def new(self) -> int:
        return sum(id(o) not in self._ids for o in self._all())


def ring_store() -> MemoryStore:
    store = MemoryStore()
    stek.init_ring(store, Policy())
    return store


def ticket_name(session: ssl.SSLSession | None) -> bytes:
    assert session is not None
    return libssl().session_ticket(session)[:16]


def tickets_per_handshake(ctx: ssl.SSLContext, cctx: ssl.SSLContext) -> int:
    """TLS 1.2 sends one ticket per full handshake, TLS 1.3 ``num_tickets``."""
    return ctx.num_tickets if cctx.maximum_version == ssl.TLSVersion.TLSv1_3 else 1


def _cycles(certs: Certs, store: MemoryStore, n: int, thunks: Thunks,
            handles: list[weakref.ref[stek.Installation]]) -> int:
    """Install and uninstall ``n`` times on one context, then install once more and
    resume on it; returns the context's SSL_CTX address (the context is dropped)."""
    ctx = server_context(certs)
    ctx_ptr = libssl().ssl_ctx_pointer(ctx)
    for _ in range(n):
        handle = stek.install(ctx, store, accelerate=False)
        assert not handle.accelerated
        handles.append(weakref.ref(handle))
        handle.uninstall()
        del handle
    # One set for the one SSL_CTX, whatever the number of cycles, and none of
    # the uninstalled installations kept alive by it.
    assert thunks.new() <= len(CALLBACK_TYPES)
    assert sum(ref() is not None for ref in handles) == 0
    assert ctx_ptr in _PINNED
    # The set taken back serves the new installation: fresh counters, real resumptions.
    handle = stek.install(ctx, store, accelerate=False)
    handles.append(weakref.ref(handle))
    assert handle.counters.resumed == 0
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        cctx = client_context(certs, version)
        first = handshake(ctx, cctx)
        assert ticket_name(first.session) in {k.name for k in store.read()}
        assert handshake(ctx, cctx, first.session).reused
    assert handle.counters.resumed == 2
    handle.uninstall()
    return ctx_ptr


def test_reinstalling_on_one_context_keeps_one_callback_set(certs: Certs) -> None:
    store = ring_store()
    binding(libssl())  # the first install's proof keeps its own thunks for the process
    thunks = Thunks()
    handles: list[weakref.ref[stek.Installation]] = []
    ctx_ptr = _cycles(certs, store, 100, thunks, handles)
    # The context is gone: OpenSSL freed its SSL_CTX, and the set went with it.
    assert thunks.new() == 0
    assert ctx_ptr not in _PINNED
    assert all(ref() is None for ref in handles)


def test_an_uninstalled_installation_is_freed_while_its_context_lives(certs: Certs) -> None:
    ctx = server_context(certs)
    handle = stek.install(ctx, ring_store(), accelerate=False)
    ref = weakref.ref(handle)
    handle.uninstall()
    del handle
    gc.collect()
    assert ref() is None
    # The context still serves full handshakes, under OpenSSL's own key.
    assert handshake(ctx, client_context(certs, ssl.TLSVersion.TLSv1_3)).session is not None


@TLS_VERSIONS
def test_a_reinstall_serves_the_new_installations_ring_and_context(
        certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """The reused callbacks answer for the installation now on the context: its
    ring, its session id context, its counters; never the one before."""
    ctx = server_context(certs)
    cctx = client_context(certs, tls_version)
    a_store, b_store = ring_store(), ring_store()
    a = stek.install(ctx, a_store, accelerate=False, session_id_context=b"first")
    old = handshake(ctx, cctx).session
    assert ticket_name(old) in {k.name for k in a_store.read()}
    a.uninstall()
    b = stek.install(ctx, b_store, accelerate=False, session_id_context=b"second")
    offered = handshake(ctx, cctx, old)
    assert not offered.reused
    assert ticket_name(offered.session) in {k.name for k in b_store.read()}
    assert handshake(ctx, cctx, offered.session).reused
    assert b.counters.resumed == 1 and b.counters.rejected_unknown == 1
    assert a.counters.resumed == 0 and a.counters.issued == tickets_per_handshake(ctx, cctx)
    b.uninstall()


@TLS_VERSIONS
def test_a_handshake_paused_across_a_reinstall_finishes_under_the_new_ring(
        certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """OpenSSL looks the callbacks up on the SSL_CTX when it calls them: a
    handshake in flight while its context is re-installed is sealed by the
    installation in place by then, and nothing it may still call is freed."""
    ctx = server_context(certs)
    a_store, b_store = ring_store(), ring_store()
    a = stek.install(ctx, a_store, accelerate=False)
    flight = MemoryHandshake(ctx, client_context(certs, tls_version))
    assert not flight.step()  # ClientHello in, the server's first flight out: no ticket yet
    a.uninstall()
    b = stek.install(ctx, b_store, accelerate=False)
    del a
    gc.collect()
    flight.finish()
    assert ticket_name(flight.session) in {k.name for k in b_store.read()}
    assert b.counters.issued == tickets_per_handshake(ctx, client_context(certs, tls_version))
    b.uninstall()
