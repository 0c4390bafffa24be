"""RedisStore against a real redis-server on 127.0.0.1 (started and killed by the tests)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

import fleet_cases as cases
from conftest import TLS_VERSIONS, Certs
from servers_fleet import RedisServer
from stek import ConfigError, StoreUnavailable, open_store
from stek.stores.redis import RedisStore
from stek.stores.sealing import write_kek_file

pytestmark = pytest.mark.servers


@pytest.fixture(autouse=True)
def _no_kek_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STEK_KEK", "STEK_KEK_FILE", "STEK_INSECURE_PLAINTEXT", "STEK_STORE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
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
        server: RedisServer, certs: Certs, tls_version: ssl.TLSVersion, kek_file: Path,
        tmp_path: Path) -> None:
    cases.two_processes_resume_each_other(server, certs, tls_version, kek_file, tmp_path)


def test_eight_racing_rotators_write_one_key_per_slot(server: RedisServer,
                                                      kek_file: Path) -> None:
    cases.racing_rotators(server, kek_file)


@TLS_VERSIONS
def test_store_killed_under_load_no_handshake_fails_then_converges(
        server: RedisServer, certs: Certs, tls_version: ssl.TLSVersion, kek_file: Path,
        tmp_path: Path) -> None:
    cases.outage_keeps_serving(server, certs, tls_version, kek_file, tmp_path)


def test_agent_retries_with_backoff_and_recovers(server: RedisServer, kek_file: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cases.agent_backs_off_while_store_down(server, kek_file, caplog)


def test_raw_values_hold_no_key_bytes(server: RedisServer, kek_file: Path) -> None:
    cases.nothing_readable_without_kek(server, kek_file)


def test_wrong_kek_is_refused_and_nothing_is_overwritten(server: RedisServer, kek_file: Path,
                                                         tmp_path: Path) -> None:
    cases.wrong_kek_refused_nothing_overwritten(server, kek_file, tmp_path)


def test_rekey_keeps_every_key(server: RedisServer, kek_file: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    cases.rekey_keeps_every_key(server, kek_file, tmp_path, capsys)


def test_plaintext_ring_is_sealed_by_rekey(server: RedisServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cases.plaintext_ring_can_be_sealed(server, tmp_path, capsys)


def test_installed_server_sees_rotation_within_a_second(server: RedisServer, certs: Certs,
                                                        kek_file: Path) -> None:
    cases.install_sees_new_key_within_a_second(server, certs, kek_file)


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
