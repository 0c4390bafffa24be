"""STEK_ROTATE=0: the gunicorn and uvicorn hooks read the ring and never rotate it (the
agent does, when nginx or HAProxy share the host)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from helpers.certs import Certs, client_context, server_context
from helpers.multiworker import fresh_hook
from helpers.tls_peers import TLSServer, connect
from stek.contrib import gunicorn as stek_gunicorn
from stek.contrib import uvicorn as stek_uvicorn
from stek.errors import ConfigError
from stek.rotation import init_ring
from stek.schedule import Policy, next_change
from stek.stores import FileStore, MemoryStore

HOOKS = {"gunicorn": (stek_gunicorn, lambda f: stek_gunicorn.ssl_context(None, f)),
         "uvicorn": (stek_uvicorn, lambda f: stek_uvicorn.ssl_context_factory(None, f))}  # type: ignore[arg-type]


@pytest.fixture(params=sorted(HOOKS))
def hook(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path) -> Iterator[tuple[ModuleType, object]]:
    module, call = HOOKS[request.param]
    with fresh_hook(monkeypatch, tmp_path, module):
        yield module, call


def due_ring(path: Path) -> FileStore:
    """A ring made earlier whose key still encrypts, with a rotation (the next key's
    publication) due now: a rotating worker would write it.  Slots are aligned to
    multiples of rotate_every, so look for a period that puts now in the right place."""
    now = time.time()
    for every in range(600, 7200, 60):
        policy = Policy(rotate_every=every, accept_for=every, publish_ahead=every // 2)
        for back in (every // 4, every // 3):
            probe = MemoryStore()
            init_ring(probe, policy, now=now - back)
            ring = probe.read()
            if len(ring) == 1 and ring.encrypting_key(now + 60) is not None and \
                    next_change(ring.keys, policy, int(now)) <= now:
                store = FileStore(path)
                init_ring(store, policy, now=now - back)
                return store
    raise AssertionError("no period gives a due ring with an encrypting key")


def test_stek_rotate_0_leaves_a_due_ring_alone(hook: tuple[ModuleType, object], certs: Certs,
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    module, call = hook
    store = due_ring(tmp_path / "ring.json")
    before = store.path.read_bytes()
    monkeypatch.setenv("STEK_ROTATE", "0")
    ctx = call(lambda: server_context(certs))  # type: ignore[operator]
    inst = module.installation()
    assert inst is not None and inst.rotate is False
    assert store.path.read_bytes() == before  # not rotated
    # It still serves the ring: a real handshake resumes through stek's callback.
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    with TLSServer(ctx) as srv:  # type: ignore[arg-type]
        first = connect(srv.port, cctx)
        assert connect(srv.port, cctx, first.session).reused
    assert inst.counters.resumed >= 1
    inst.refresh()
    assert store.path.read_bytes() == before


def test_default_still_rotates(hook: tuple[ModuleType, object], certs: Certs,
                               tmp_path: Path) -> None:
    module, call = hook
    call(lambda: server_context(certs))  # type: ignore[operator]
    inst = module.installation()
    assert inst is not None and inst.rotate is True
    assert (tmp_path / "ring.json").exists()  # created by the worker


def test_a_typo_in_stek_rotate_is_refused(hook: tuple[ModuleType, object], certs: Certs,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, call = hook
    monkeypatch.setenv("STEK_ROTATE", "nope")
    with pytest.raises(ConfigError, match="STEK_ROTATE"):
        call(lambda: server_context(certs))  # type: ignore[operator]
