"""A stek-installed in-process server on a file store, with either callback (C or Python)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import stek
from helpers.certs import Certs, server_context
from helpers.tls_peers import TLSServer
from stek.keyring import Keyring
from stek.keys import TicketKey, generate_key
from stek.schedule import Policy
from stek.stores import FileStore


def key_at(activates: float, retires: float, expires: float, size: int = 80) -> TicketKey:
    return generate_key(size=size, activates_at=int(activates), retires_at=int(retires),
                        expires_at=int(expires))


def write_ring(store: FileStore, *keys: TicketKey) -> Keyring:
    def mutate(current: Keyring | None) -> Keyring:
        gen = current.generation + 1 if current else 1
        return Keyring(Policy(), keys, gen)

    return store.update(mutate)


@pytest.fixture(autouse=True, params=[True, False], ids=["c-callback", "python-callback"])
def callback_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run every test with the compiled callback and with the ctypes one."""
    install_fn = sys.modules["stek.installation"].install
    monkeypatch.setitem(install_fn.__kwdefaults__, "accelerate", request.param)
    return bool(request.param)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    s = FileStore(tmp_path / "ring.json")
    stek.init_ring(s, Policy())
    return s


@pytest.fixture
def server(certs: Certs, store: FileStore):
    ctx = server_context(certs)
    handle = stek.install(ctx, store)
    with TLSServer(ctx) as srv:
        yield srv, handle
        assert srv.errors == []
    handle.uninstall()
