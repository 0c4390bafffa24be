"""``stek kek``, ``stek migrate`` and the sealing options of every --store command,
against real redis-server and etcd."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.store_servers import EtcdServer, RedisServer
from stek import Policy, init_ring, open_store, rotate
from stek.cli import main
from stek.stores.sealing import kek_id, read_kek_file

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

STEP = 60
BASE = 28_333_334 * STEP


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    srv = EtcdServer(tmp_path_factory.mktemp("etcd"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def kek(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "fleet.kek"
    assert main(["kek", str(path)]) == 0
    capsys.readouterr()
    return path


def _unique(url: str, name: str) -> str:
    if url.startswith("etcd://"):
        return url.rsplit("/", 1)[0] + "/" + name
    return url.replace("prefix=stektest", f"prefix={name}")


def test_kek_writes_0600_file_and_prints_only_its_id(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k"
    assert main(["kek", str(path)]) == 0
    out = capsys.readouterr().out
    (key,) = read_kek_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert kek_id(key) in out and key.hex() not in out
    assert main(["kek", str(path)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert read_kek_file(path) == [key]


def test_shared_store_without_kek_is_a_one_line_error(redis_server: RedisServer,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--store", _unique(redis_server.url, "nokek")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stek kek" in err and "Traceback" not in err


def test_kek_from_option_or_environment(redis_server: RedisServer, kek: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = _unique(redis_server.url, "envkek")
    assert main(["init", "--store", url, "--kek-file", str(kek)]) == 0
    monkeypatch.setenv("STEK_KEK_FILE", str(kek))
    assert main(["status", "--store", url, "--json"]) == 0
    assert '"state": "active"' in capsys.readouterr().out


def test_insecure_plaintext_warns_loudly(etcd_server: EtcdServer,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    url = _unique(etcd_server.url, "plain")
    assert main(["init", "--store", url, "--insecure-plaintext"]) == 0
    assert "WARNING" in capsys.readouterr().err


def _store_urls(kind: str, redis_server: RedisServer, etcd_server: EtcdServer, tmp_path: Path,
                name: str) -> str:
    if kind == "file":
        return f"file:{tmp_path / name / 'keyring.json'}"
    return _unique(redis_server.url if kind == "redis" else etcd_server.url, name)


@pytest.mark.parametrize(("src_kind", "dst_kind"), [
    ("file", "redis"), ("redis", "etcd"), ("etcd", "file"), ("file", "etcd"), ("etcd", "redis"),
    ("redis", "file"),
])
def test_migrate_copies_every_key(src_kind: str, dst_kind: str, redis_server: RedisServer,
                                  etcd_server: EtcdServer, kek: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    tag = f"mig-{src_kind}-{dst_kind}"
    src_url = _store_urls(src_kind, redis_server, etcd_server, tmp_path, tag + "-src")
    dst_url = _store_urls(dst_kind, redis_server, etcd_server, tmp_path, tag + "-dst")
    src = open_store(src_url, kek_file=str(kek))
    init_ring(src, Policy(rotate_every=STEP, accept_for=600, publish_ahead=30), now=BASE)
    for i in range(1, 4):
        rotate(src, now=BASE + i * STEP)
    ring = src.read()
    assert main(["migrate", "--from", src_url, "--to", dst_url, "--kek-file", str(kek)]) == 0
    assert "copied 4 key(s)" in capsys.readouterr().out
    copied = open_store(dst_url, kek_file=str(kek)).read()
    assert copied.keys == ring.keys and copied.policy == ring.policy
    assert src.read().keys == ring.keys  # the source is untouched


def test_migrate_refuses_a_non_empty_destination_unless_forced(
        redis_server: RedisServer, etcd_server: EtcdServer, kek: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    src_url = f"file:{tmp_path / 'src.json'}"
    dst_url = _unique(etcd_server.url, "busy")
    src = open_store(src_url)
    init_ring(src, Policy(), now=BASE)
    dst = open_store(dst_url, kek_file=str(kek))
    theirs = init_ring(dst, Policy(), now=BASE).ring
    args = ["migrate", "--from", src_url, "--to", dst_url, "--kek-file", str(kek)]
    assert main(args) == 2
    assert "already holds a ring" in capsys.readouterr().err
    assert dst.read().keys == theirs.keys
    assert main([*args, "--force"]) == 0
    assert dst.read().keys == src.read().keys


def test_migrate_to_another_kek(redis_server: RedisServer, kek: Path, tmp_path: Path) -> None:
    src_url = _unique(redis_server.url, "kekA")
    dst_url = _unique(redis_server.url, "kekB")
    other = tmp_path / "other.kek"
    assert main(["kek", str(other)]) == 0
    init_ring(open_store(src_url, kek_file=str(kek)), Policy(), now=BASE)
    assert main(["migrate", "--from", src_url, "--to", dst_url, "--kek-file", str(kek),
                 "--to-kek-file", str(other)]) == 0
    assert open_store(dst_url, kek_file=str(other)).read().keys == \
        open_store(src_url, kek_file=str(kek)).read().keys


def test_rekey_refuses_a_file_store(tmp_path: Path, kek: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"file:{tmp_path / 'k.json'}"
    init_ring(open_store(url), Policy())
    assert main(["rekey", "--store", url, "--new-kek-file", str(kek)]) == 2
    assert "not a shared store" in capsys.readouterr().err
