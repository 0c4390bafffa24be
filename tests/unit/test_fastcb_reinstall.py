"""Re-installing on one live SSLContext takes back the compiled-callback slot
its SSL_CTX holds, instead of using up another one each time."""

from __future__ import annotations

import gc
import ssl

import pytest

import stek
from helpers.certs import Certs, client_context, server_context
from helpers.tls_peers import TLSServer, reconnects
from stek.installation import accelerated_available
from stek.schedule import Policy
from stek.stores.memory import MemoryStore

pytestmark = pytest.mark.skipif(not accelerated_available(),
                                reason="stek.hazmat._fastcb is not built")


def test_reinstalling_on_one_context_reuses_its_slot(certs: Certs) -> None:
    from stek.hazmat import _fastcb  # type: ignore[attr-defined]

    store = MemoryStore()
    stek.init_ring(store, Policy())
    gc.collect()
    before = _fastcb.in_use()
    ctx = server_context(certs)
    for _ in range(100):
        handle = stek.install(ctx, store)
        assert handle.accelerated
        handle.uninstall()
        # At most the one slot the SSL_CTX holds, whatever the number of cycles.
        assert _fastcb.in_use() <= before + 1
    handle = stek.install(ctx, store, accelerate=True)
    assert handle.accelerated is True
    assert _fastcb.in_use() == before + 1
    # The slot taken back serves: fresh counters, real resumptions.
    assert handle.counters.resumed == 0
    with TLSServer(ctx) as srv:
        assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_2), 2) == 2
        assert reconnects(srv.port, client_context(certs, ssl.TLSVersion.TLSv1_3), 2) == 2
        assert not srv.errors
    assert handle.counters.resumed == 4
    handle.uninstall()


def test_two_live_installations_never_share_a_slot(certs: Certs) -> None:
    """Only a slot no installation uses is taken back: two contexts, two slots."""
    store = MemoryStore()
    stek.init_ring(store, Policy())
    a, b = server_context(certs), server_context(certs)
    ha = stek.install(a, store)
    hb = stek.install(b, store)
    assert ha.accelerated and hb.accelerated
    assert ha._slot != hb._slot
    ha.uninstall()
    hb2 = stek.install(a, store)
    assert hb2._slot != hb._slot
    hb.uninstall()
    hb2.uninstall()


def test_stale_build_is_ignored_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture,
                                               certs: Certs) -> None:
    """A _fastcb built from an older _fastcb.c (no API 2: acquire() without the
    SSL_CTX) would fail every install: the Python callback serves instead."""
    import sys
    import types

    import stek.hazmat
    from stek import _accel

    stale = types.ModuleType("stek.hazmat._fastcb")
    stale.__file__ = "/stale/_fastcb.cpython-311-x86_64-linux-gnu.so"
    monkeypatch.setitem(sys.modules, "stek.hazmat._fastcb", stale)
    monkeypatch.setattr(stek.hazmat, "_fastcb", stale, raising=False)
    monkeypatch.setattr(_accel, "_ACCEL", None)
    monkeypatch.setattr(_accel, "_ACCEL_TRIED", False)
    store = MemoryStore()
    stek.init_ring(store, Policy())
    with caplog.at_level("WARNING", logger="stek.installation"):
        handle = stek.install(server_context(certs), store)
    assert not handle.accelerated
    assert "stale build" in caplog.text
    handle.uninstall()
