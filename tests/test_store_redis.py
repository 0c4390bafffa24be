"""RedisStore against a real redis-server on 127.0.0.1 (started and killed by the tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from servers_fleet import RedisServer
from stek import ConfigError, StoreUnavailable, open_store
from stek.stores.redis import RedisStore

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_url_password_never_shown(kek_file: Path) -> None:
    store = open_store("redis://stek:s3cr3tpw@127.0.0.1:1/0?prefix=p", kek_file=str(kek_file))
    assert isinstance(store, RedisStore)
    assert "s3cr3tpw" not in store.url and "s3cr3tpw" not in repr(store)
    assert store.url == "redis://stek@127.0.0.1:1/0?prefix=p"
    assert store.key == "p:keyring"
    with pytest.raises(StoreUnavailable) as info:
        store.read()  # nothing listens on port 1
    assert "s3cr3tpw" not in str(info.value)


def test_unknown_option_and_bad_url_are_config_errors(kek_file: Path) -> None:
    with pytest.raises(ConfigError, match="unknown store option"):
        open_store("redis://127.0.0.1:1/0", kek_file=str(kek_file), colour="blue")
    with pytest.raises(ConfigError):
        open_store("redis://127.0.0.1:1/0?prefix=", kek_file=str(kek_file))


def test_unreachable_server_fails_fast(kek_file: Path) -> None:
    """A refresher must never hang: a dead address answers within the short timeouts."""
    import time

    from conftest import free_port

    store = open_store(f"redis://127.0.0.1:{free_port()}/0", kek_file=str(kek_file))
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.read()
    assert time.monotonic() - t < 3


def test_write_that_reaches_no_replica_does_not_count(server: RedisServer,
                                                      kek_file: Path) -> None:
    """min_replicas=1 on a primary without replicas: WAIT answers 0, the write is refused."""
    from stek import Policy, init_ring

    store = open_store(server.url + "&min_replicas=1&wait_timeout=0.2", kek_file=str(kek_file))
    with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
        init_ring(store, Policy())
    # Without replicas connected, the default (auto) counts the primary's word.
    auto = open_store(server.url, kek_file=str(kek_file))
    assert init_ring(auto, Policy(), force=True).ring.keys
