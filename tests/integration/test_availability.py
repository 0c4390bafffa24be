"""TLS never depends on the store: stek.install() on a store that is down or empty.

Real handshakes on 127.0.0.1 against a Redis URL with nothing listening,
then a real redis-server started on that very port with a sealed ring; and
a file store whose ring does not exist yet.  Log lines are counted with
caplog: one when the store fails, one when it answers again.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

import pytest

import stek
import stek._refresh
from helpers.certs import Certs, client_context, server_context
from helpers.store_servers import RedisServer
from helpers.tls_peers import connect, reconnects, serving
from helpers.waiting import holds_within as wait_for
from stek.stores import FileStore

TLS12 = ssl.TLSVersion.TLSv1_2


def stek_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("stek")
            and r.levelno >= logging.WARNING and text in r.getMessage()]


def test_dead_redis_serves_full_handshakes_then_picks_up_the_ring(
        certs: Certs, tmp_path: Path, kek_file: Path, no_kek_env: None,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listening: full handshakes, no tickets; redis-server starts: tickets resume."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(stek._refresh, "RETRY_INTERVAL", 0.05)  # retries come fast
    redis = RedisServer(tmp_path / "redis")  # a free port, nothing listening yet
    url = redis.url
    ctx = server_context(certs)
    store = stek.open_store(url, kek_file=str(kek_file))
    reads = []
    read = store.read
    store.read = lambda: (reads.append(1), read())[1]  # type: ignore[method-assign]
    inst = stek.install(ctx, store)
    assert not inst.store_ok and inst.last_refresh is None
    cctx = client_context(certs, TLS12)
    try:
        with serving(ctx) as srv:
            for _ in range(3):
                r = connect(srv.port, cctx)
                assert not r.reused
            # Several retries against the dead port: still one warning.
            assert wait_for(lambda: len(reads) >= 4)
            assert srv.errors == []
            assert inst.counters.no_active_key >= 3 and inst.counters.issued == 0
            assert r.session is not None and not r.session.has_ticket
            assert len(stek_warnings(caplog, "unreadable")) == 1, caplog.text

            with redis:
                ring = stek.rotate(stek.open_store(url, kek_file=str(kek_file)),
                                   create=stek.Policy()).ring
                assert wait_for(lambda: inst.ring.generation == ring.generation)
                assert inst.store_ok and inst.last_refresh is not None
                assert reconnects(srv.port, cctx, 5) == 5
                assert inst.counters.resumed >= 5
                inst.uninstall()  # before redis-server stops: that outage is another story
            assert srv.errors == []
    finally:
        inst.uninstall()
    assert len(stek_warnings(caplog, "unreadable")) == 1, caplog.text
    assert len(stek_warnings(caplog, "is back")) == 1, caplog.text


def test_empty_file_store_serves_then_picks_up_the_ring(
        certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No ring yet (NotInitialized): no error, no ticket; the ring is read once created."""
    path = tmp_path / "ring.json"
    caplog.set_level(logging.INFO)
    ctx = server_context(certs)
    inst = stek.install(ctx, f"file:{path}")
    try:
        assert not inst.store_ok and inst.last_refresh is None and len(inst.ring) == 0
        cctx = client_context(certs, TLS12)
        with serving(ctx) as srv:
            first = connect(srv.port, cctx)
            assert not first.reused
            assert first.session is not None and not first.session.has_ticket
            created = stek.init_ring(FileStore(path), stek.Policy()).ring
            assert wait_for(lambda: inst.ring.generation == created.generation)
            assert inst.store_ok and inst.last_refresh is not None
            assert reconnects(srv.port, cctx, 3) == 3
            assert srv.errors == []
        assert inst.counters.resumed >= 3 and inst.counters.no_active_key >= 1
    finally:
        inst.uninstall()
    assert len(stek_warnings(caplog, "unreadable")) == 1, caplog.text
    assert "rotate=True" in stek_warnings(caplog, "unreadable")[0]


def test_last_refresh_follows_successful_reads(certs: Certs, tmp_path: Path) -> None:
    """last_refresh is the time.time() of the last good read; store_ok turns False on a bad one."""
    store = FileStore(tmp_path / "ring.json")
    stek.init_ring(store, stek.Policy())
    before = time.time()
    inst = stek.install(server_context(certs), store)
    try:
        assert inst.store_ok and inst.last_refresh is not None
        assert before <= inst.last_refresh <= time.time()
        first = inst.last_refresh
        inst.refresh()
        assert inst.last_refresh >= first
        store.path.write_bytes(b"{ not a keyring")
        with pytest.raises(stek.StoreCorrupt):
            inst.refresh()
        assert not inst.store_ok and inst.last_refresh >= first
    finally:
        inst.uninstall()


def test_strict_fails_fast_on_a_dead_store(certs: Certs, tmp_path: Path, kek_file: Path,
                                           no_kek_env: None) -> None:
    """strict=True: a store that does not answer raises at install(), and nothing is installed."""
    redis = RedisServer(tmp_path / "redis")
    ctx = server_context(certs)
    with pytest.raises(stek.StoreUnavailable):
        stek.install(ctx, stek.open_store(redis.url, kek_file=str(kek_file)), strict=True)
    with pytest.raises(stek.NotInitialized, match="rotate=True"):
        stek.install(ctx, f"file:{tmp_path / 'none.json'}", strict=True)
    # The context is untouched: stek can still be installed on it.
    store = FileStore(tmp_path / "ring.json")
    stek.init_ring(store, stek.Policy())
    stek.install(ctx, store, strict=True).uninstall()


def test_many_installs_share_one_watch_and_one_thread(certs: Certs, tmp_path: Path) -> None:
    """Ten contexts on one file store: one background thread, one read per change, all follow it."""
    store = FileStore(tmp_path / "ring.json")
    stek.init_ring(store, stek.Policy())
    url = f"file:{store.path}"
    before = {t.name for t in threading.enumerate()}
    insts = [stek.install(server_context(certs), url) for _ in range(10)]
    try:
        assert len({id(i.store) for i in insts}) == 1  # one store object for one URL
        started = [t for t in threading.enumerate() if t.name not in before]
        assert [t.name for t in started] in ([], ["stek-background"])
        assert sum(t.name == "stek-background" for t in threading.enumerate()) == 1
        gen = stek.rotate(FileStore(store.path), now=time.time() + 7200).ring.generation
        assert wait_for(lambda: all(i.ring.generation == gen for i in insts), 5.0)
    finally:
        for i in insts:
            i.uninstall()


def test_file_watch_uses_one_inotify_descriptor_for_many_files(tmp_path: Path) -> None:
    """Subscriptions on several files share one inotify descriptor; a rename is seen."""
    from stek.stores import _filewatch

    hub = _filewatch._Hub()
    seen: dict[str, threading.Event] = {n: threading.Event() for n in ("a", "b")}
    subs = [hub.add(tmp_path / f"{n}.json", seen[n].set) for n in seen]
    try:
        assert hub.inotify
        assert {s.wd for s in subs} != {None} and len({s.wd for s in subs}) == 1
        tmp = tmp_path / "b.json.tmp"
        tmp.write_bytes(b"x")
        tmp.rename(tmp_path / "b.json")  # as stek._atomic replaces a keyring
        assert seen["b"].wait(5)
        assert not seen["a"].is_set()
    finally:
        for s in subs:
            s.close()
    assert not hub.inotify  # the last close released the descriptor


def test_file_watch_without_inotify_polls_and_sees_a_directory_appear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No inotify (or no directory yet): the shared stat loop sees the file appear."""
    from stek.stores import _filewatch

    for inotify in (False, True):
        if not inotify:
            monkeypatch.setattr(_filewatch, "_libc", lambda: None)
        else:
            monkeypatch.undo()
        hub = _filewatch._Hub()
        path = tmp_path / f"later-{inotify}" / "ring.json"  # the directory does not exist
        seen = threading.Event()
        sub = hub.add(path, seen.set)
        try:
            assert sub.wd is None and hub.inotify == inotify
            stek.init_ring(FileStore(path), stek.Policy())
            assert seen.wait(5)
            # With inotify available, the subscription moved onto it once the directory existed.
            assert (sub.wd is not None) == inotify
        finally:
            sub.close()
