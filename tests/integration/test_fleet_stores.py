"""The fleet stores' shared behaviour, run on real redis-server and etcd, plain and TLS.

Each test runs once per store (the ``server`` fixture: plaintext Redis, Redis with
TLS and an ACL user, plaintext etcd, 3 etcd members with TLS and users), started on 127.0.0.1
by the test and killed at its end; the scenarios live in tests/fleet_cases.py.
Store-specific checks stay in test_store_redis.py and test_store_etcd.py.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import fleet_scenarios as cases
from helpers.certs import TLS_VERSIONS, Certs
from helpers.pki import make_pki
from helpers.store_servers import EtcdCluster, EtcdServer, RedisServer, RedisTLSServer

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

FleetServer = RedisServer | RedisTLSServer | EtcdServer | EtcdCluster


@pytest.fixture(params=["redis", "redis-tls-acl", "etcd", "etcd-tls-auth"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FleetServer]:
    srv: FleetServer
    if request.param == "redis":
        srv = RedisServer(tmp_path / "redis")
    elif request.param == "redis-tls-acl":  # rediss://: CA, client cert, ACL user, password file
        srv = RedisTLSServer(tmp_path / "redis", make_pki(tmp_path / "pki"))
    elif request.param == "etcd":
        srv = EtcdServer(tmp_path / "etcd")
    else:  # three members, TLS on client and peer URLs, a user with a password file
        srv = EtcdCluster(tmp_path / "etcd", make_pki(tmp_path / "pki"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@TLS_VERSIONS
def test_two_server_processes_resume_each_others_tickets(
        server: FleetServer, certs: Certs, tls_version: ssl.TLSVersion, kek_file: Path,
        tmp_path: Path) -> None:
    cases.two_processes_resume_each_other(server, certs, tls_version, kek_file, tmp_path)


def test_eight_racing_rotators_write_one_key_per_slot(server: FleetServer,
                                                      kek_file: Path) -> None:
    cases.racing_rotators(server, kek_file)


@TLS_VERSIONS
def test_store_killed_under_load_no_handshake_fails_then_converges(
        server: FleetServer, certs: Certs, tls_version: ssl.TLSVersion, kek_file: Path,
        tmp_path: Path) -> None:
    cases.outage_keeps_serving(server, certs, tls_version, kek_file, tmp_path)


def test_agent_retries_with_backoff_and_recovers(server: FleetServer, kek_file: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cases.agent_backs_off_while_store_down(server, kek_file, caplog)


def test_raw_values_hold_no_key_bytes(server: FleetServer, kek_file: Path) -> None:
    cases.nothing_readable_without_kek(server, kek_file)


def test_wrong_kek_is_refused_and_nothing_is_overwritten(server: FleetServer, kek_file: Path,
                                                         tmp_path: Path) -> None:
    cases.wrong_kek_refused_nothing_overwritten(server, kek_file, tmp_path)


def test_rekey_keeps_every_key(server: FleetServer, kek_file: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    cases.rekey_keeps_every_key(server, kek_file, tmp_path, capsys)


def test_plaintext_ring_is_sealed_by_rekey(server: FleetServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cases.plaintext_ring_can_be_sealed(server, tmp_path, capsys)


def test_installed_server_sees_rotation_within_a_second(server: FleetServer, certs: Certs,
                                                        kek_file: Path) -> None:
    cases.install_sees_new_key_within_a_second(server, certs, kek_file)
