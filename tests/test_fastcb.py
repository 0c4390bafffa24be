"""The compiled callback (stek.hazmat._fastcb): built, used, and its slots managed."""

from __future__ import annotations

import gc
import ssl

import pytest

import stek
from conftest import Certs, client_context, server_context
from stek.errors import BindingError
from stek.installation import accelerated_available
from stek.schedule import Policy
from stek.stores.memory import MemoryStore
from support import TLSServer, reconnects


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
    for i in range(150):
        ctx = server_context(certs)
        handle = stek.install(ctx, store, accelerate=True)
        if i % 2:
            handle.uninstall()
        del ctx, handle
        gc.collect()


def test_exhausted_slots_fall_back_to_python_or_raise(certs: Certs,
                                                      store: MemoryStore) -> None:
    from stek.hazmat import _fastcb  # type: ignore[attr-defined]

    held = [stek.install(server_context(certs), store, accelerate=True)
            for _ in range(_fastcb.SLOTS)]
    try:
        with pytest.raises(BindingError, match="slots are in use"):
            stek.install(server_context(certs), store, accelerate=True)
        ctx = server_context(certs)
        fallback = stek.install(ctx, store)
        assert not fallback.accelerated
        with TLSServer(ctx) as srv:
            assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 2) == 2
        assert fallback.counters.resumed == 2
    finally:
        for h in held:
            h.uninstall()
