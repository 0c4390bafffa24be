"""EtcdStore against a real etcd on 127.0.0.1 (started and killed by the tests)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

import fleet_cases as cases
from conftest import TLS_VERSIONS, Certs
from servers_fleet import EtcdServer
from stek import ConfigError, StoreUnavailable, open_store
from stek.stores.etcd import EtcdStore
from stek.stores.sealing import write_kek_file

pytestmark = pytest.mark.servers


@pytest.fixture(autouse=True)
def _no_kek_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STEK_KEK", "STEK_KEK_FILE", "STEK_INSECURE_PLAINTEXT", "STEK_STORE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EtcdServer]:
    srv = EtcdServer(tmp_path / "etcd")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def kek_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.kek"
    write_kek_file(path)
    return path


@TLS_VERSIONS
def test_two_server_processes_resume_each_others_tickets(
        server: EtcdServer, certs: Certs, tls_version: ssl.TLSVersion, kek_file: Path,
        tmp_path: Path) -> None:
    cases.two_processes_resume_each_other(server, certs, tls_version, kek_file, tmp_path)


def test_eight_racing_rotators_write_one_key_per_slot(server: EtcdServer,
                                                      kek_file: Path) -> None:
    cases.racing_rotators(server, kek_file)


@TLS_VERSIONS
def test_store_killed_under_load_no_handshake_fails_then_converges(
        server: EtcdServer, certs: Certs, tls_version: ssl.TLSVersion, kek_file: Path,
        tmp_path: Path) -> None:
    cases.outage_keeps_serving(server, certs, tls_version, kek_file, tmp_path)


def test_agent_retries_with_backoff_and_recovers(server: EtcdServer, kek_file: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cases.agent_backs_off_while_store_down(server, kek_file, caplog)


def test_raw_values_hold_no_key_bytes(server: EtcdServer, kek_file: Path) -> None:
    cases.nothing_readable_without_kek(server, kek_file)


def test_wrong_kek_is_refused_and_nothing_is_overwritten(server: EtcdServer, kek_file: Path,
                                                         tmp_path: Path) -> None:
    cases.wrong_kek_refused_nothing_overwritten(server, kek_file, tmp_path)


def test_rekey_keeps_every_key(server: EtcdServer, kek_file: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    cases.rekey_keeps_every_key(server, kek_file, tmp_path, capsys)


def test_plaintext_ring_is_sealed_by_rekey(server: EtcdServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cases.plaintext_ring_can_be_sealed(server, tmp_path, capsys)


def test_installed_server_sees_rotation_within_a_second(server: EtcdServer, certs: Certs,
                                                        kek_file: Path) -> None:
    cases.install_sees_new_key_within_a_second(server, certs, kek_file)


def test_url_and_key_layout(kek_file: Path) -> None:
    store = open_store("etcd://127.0.0.1:1/fleet/a/", kek_file=str(kek_file))
    assert isinstance(store, EtcdStore)
    assert store.url == "etcd://127.0.0.1:1/fleet/a"
    assert store.key == "/fleet/a/keyring"
    default = open_store("etcd://127.0.0.1:1", kek_file=str(kek_file))
    assert isinstance(default, EtcdStore) and default.key == "/stek/keyring"
    with pytest.raises(ConfigError, match="not supported"):
        open_store("etcd://u:pw@127.0.0.1:1/x", kek_file=str(kek_file))


def test_unknown_option_is_a_config_error(kek_file: Path) -> None:
    with pytest.raises(ConfigError, match="unknown store option"):
        open_store("etcd://127.0.0.1:1/x", kek_file=str(kek_file), colour="blue")


def test_unreachable_server_fails_fast(kek_file: Path) -> None:
    """A refresher must never hang: a dead address answers within the short timeouts."""
    import time

    from conftest import free_port

    store = open_store(f"etcd://127.0.0.1:{free_port()}/x", kek_file=str(kek_file))
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.read()
    assert time.monotonic() - t < 3


def test_gateway_path_is_v3_on_etcd_34(server: EtcdServer, kek_file: Path) -> None:
    """etcd 3.4 serves /v3/ (and the deprecated /v3beta/); etcd3gw discovers /v3/."""
    store = open_store(server.url, kek_file=str(kek_file))
    assert isinstance(store, EtcdStore)
    store.read_raw()
    assert store._client.api_path == "/v3/"
