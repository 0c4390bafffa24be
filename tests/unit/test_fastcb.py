"""The compiled callback (stek.hazmat._fastcb): built, used, and its slots managed."""

from __future__ import annotations

import gc
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stek
from helpers.certs import Certs, client_context, server_context
from helpers.tls_peers import TLSServer, reconnects
from stek.errors import BindingError
from stek.installation import accelerated_available
from stek.schedule import Policy
from stek.stores.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    stek.init_ring(s, Policy())
    return s


def test_compiled_callback_is_built_and_used_by_default(certs: Certs,
                                                         store: MemoryStore) -> None:
    assert accelerated_available(), "stek.hazmat._fastcb was not built (pip install -e .)"
    assert stek.install(server_context(certs), store).accelerated


def test_custom_clock_uses_the_python_callback(certs: Certs, store: MemoryStore) -> None:
    handle = stek.install(server_context(certs), store, clock=lambda: 1e9)
    assert not handle.accelerated
    with pytest.raises(BindingError, match="custom clock"):
        stek.install(server_context(certs), store, clock=lambda: 1e9, accelerate=True)


def test_slots_are_recycled_by_uninstall_and_gc(certs: Certs, store: MemoryStore) -> None:
    """More installs than slots, released by uninstall() or by GC: never exhausted."""
    # Objects from before the loop move to the permanent generation, so each
    # collection walks only what the loop made (150 full walks of the test
    # process's heap took seconds); what the loop drops is collected as before.
    gc.freeze()
    try:
        for i in range(150):
            ctx = server_context(certs)
            handle = stek.install(ctx, store, accelerate=True)
            if i % 2:
                handle.uninstall()
            del ctx, handle
            gc.collect()
    finally:
        gc.unfreeze()


def test_exhausted_slots_fall_back_to_python_or_raise(certs: Certs,
                                                      store: MemoryStore) -> None:
    from stek.hazmat import _fastcb  # type: ignore[attr-defined]

    # A slot is held until OpenSSL frees its SSL_CTX: contexts of earlier tests
    # that are garbage but not yet collected would still hold theirs.
    gc.collect()
    held = []
    with pytest.raises(BindingError, match="slots are in use"):
        for _ in range(_fastcb.SLOTS + 1):
            held.append(stek.install(server_context(certs), store, accelerate=True))
    assert 0 < len(held) <= _fastcb.SLOTS
    try:
        ctx = server_context(certs)
        fallback = stek.install(ctx, store)
        assert not fallback.accelerated
        with TLSServer(ctx) as srv:
            assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 2) == 2
        assert fallback.counters.resumed == 2
    finally:
        for h in held:
            h.uninstall()


# Invariant: whatever birth a ticket carries (any 8 bytes, read unsigned), and
# whatever the clock and accept_for, the compiled dec_cb and the Python one
# (stek.schedule.decrypted_ticket_answer over stek.session.decode_birth) give
# the same answer.  Before, C read births >= 2^63 as negative and overflowed
# ``born + max_age``.
@settings(max_examples=2000, deadline=None)
@given(
    status=st.integers(-2, 9),
    birth=st.one_of(st.none(), st.integers(0, 2**64 - 1),
                    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1])),
    raw=st.one_of(st.none(), st.binary(min_size=0, max_size=16)),
    session_time=st.integers(0, 2**62),
    now=st.one_of(st.integers(0, 2**63 - 1), st.integers(1_700_000_000, 1_800_000_000)),
    max_age=st.integers(0, 2**40),
)
def test_compiled_and_python_decisions_agree(status: int, birth: int | None, raw: bytes | None,
                                             session_time: int, now: int,
                                             max_age: int) -> None:
    from stek.hazmat import _fastcb  # type: ignore[attr-defined]
    from stek.schedule import DECRYPTED_TICKET, TicketStatus, decrypted_ticket_answer
    from stek.session import decode_birth, encode_birth

    assert accelerated_available()
    appdata = encode_birth(birth) if birth is not None else raw
    table = bytes(int(DECRYPTED_TICKET[s]) for s in TicketStatus)
    decoded = decode_birth(appdata)
    born = decoded if decoded is not None else session_time
    expected = decrypted_ticket_answer(status, born, now, max_age)
    answer, refused = _fastcb.decide(table, status, appdata, session_time, now, max_age)
    assert answer == int(expected)
    assert refused == (status in (5, 6) and int(expected) != int(DECRYPTED_TICKET[
        TicketStatus(status)]))
