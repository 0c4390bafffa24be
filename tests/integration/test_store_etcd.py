"""EtcdStore against a real etcd on 127.0.0.1 (started and killed by the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.store_servers import EtcdServer
from stek import ConfigError, StoreUnavailable, open_store
from stek.stores.etcd import EtcdStore

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]


def test_url_and_key_layout(kek_file: Path) -> None:
    store = open_store("etcd://127.0.0.1:1/fleet/a/", kek_file=str(kek_file))
    assert isinstance(store, EtcdStore)
    assert store.url == "etcd://127.0.0.1:1/fleet/a"
    assert store.key == "/fleet/a/keyring"
    default = open_store("etcd://127.0.0.1:1", kek_file=str(kek_file))
    assert isinstance(default, EtcdStore) and default.key == "/stek/keyring"


def test_unknown_option_is_a_config_error(kek_file: Path) -> None:
    with pytest.raises(ConfigError, match="unknown store option"):
        open_store("etcd://127.0.0.1:1/x", kek_file=str(kek_file), colour="blue")


def test_unreachable_server_fails_fast(kek_file: Path) -> None:
    """A refresher must never hang: a dead address answers within the short timeouts."""
    import time

    from helpers.ports import free_port

    store = open_store(f"etcd://127.0.0.1:{free_port()}/x", kek_file=str(kek_file))
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.read()
    assert time.monotonic() - t < 3


def test_gateway_path_is_v3_on_etcd_34(etcd_server: EtcdServer, kek_file: Path) -> None:
    """etcd 3.4 serves /v3/ (and the deprecated /v3beta/); etcd3gw discovers /v3/."""
    store = open_store(etcd_server.url, kek_file=str(kek_file))
    assert isinstance(store, EtcdStore)
    store.read_raw()
    assert store._client.api_path == "/v3/"
    assert store.identity == "etcd:/stektest/keyring"
