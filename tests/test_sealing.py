"""Sealing (AES-256-GCM under a KEK) and the shared-store machinery, without servers.

A fake backend (a dict guarded by a version counter) stands in for Redis and
etcd here; the real ones are proven in test_store_redis.py / test_store_etcd.py.
"""

from __future__ import annotations

import base64
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from stek import ConfigError, Keyring, NotInitialized, Policy, SealingError, StekError
from stek.rotation import init_ring, rotate
from stek.stores.sealing import (
    KEK_LEN,
    AnySealer,
    Plaintext,
    Sealer,
    SharedStore,
    WatchThread,
    kek_id,
    read_kek_file,
    sealer_from,
    write_kek_file,
)

STEP = 60
BASE = 28_333_334 * STEP
POLICY = Policy(rotate_every=STEP, accept_for=3600, publish_ahead=30)


class FakeShared(SharedStore[int]):
    """A value and a version in memory; the compare-and-set holds a lock."""

    def __init__(self, sealer: AnySealer, cell: dict[str, object] | None = None) -> None:
        super().__init__("fake://", sealer)
        self.cell = cell if cell is not None else {"value": None, "version": 0}
        self.lock = threading.Lock()

    def _load(self) -> tuple[bytes | None, int]:
        with self.lock:
            return self.cell["value"], self.cell["version"]  # type: ignore[return-value]

    def _swap(self, token: int, data: bytes) -> bool:
        with self.lock:
            if self.cell["version"] != token:
                return False
            self.cell["value"] = data
            self.cell["version"] = token + 1
            return True

    def subscribe(self, on_change: Callable[[], None]) -> WatchThread:
        raise NotImplementedError


def ring_with_keys(n: int = 3) -> Keyring:
    store = FakeShared(Plaintext())
    init_ring(store, POLICY, now=BASE)
    for i in range(1, n):
        rotate(store, now=BASE + i * STEP)
    return store.read()


def test_seal_open_round_trip_and_layout() -> None:
    kek = os.urandom(KEK_LEN)
    s = Sealer(kek)
    plain = ring_with_keys().to_bytes()
    blob = s.seal(plain)
    assert blob[:9] == b"STEKSEAL\x01"
    assert blob[9:17].hex() == kek_id(kek)
    assert len(blob) == 17 + 12 + len(plain) + 16
    assert s.open(blob, "x") == plain
    assert s.seal(plain) != blob  # a fresh nonce every time


def test_sealed_value_contains_no_key_bytes() -> None:
    ring = ring_with_keys()
    blob = Sealer(os.urandom(KEK_LEN)).seal(ring.to_bytes())
    for k in ring.keys:
        for secret in (k.aes_key, k.hmac_key):
            for enc in (secret, base64.b64encode(secret), secret.hex().encode()):
                assert enc not in blob


def test_wrong_kek_is_named_as_such() -> None:
    blob = Sealer(os.urandom(KEK_LEN)).seal(b"{}")
    other = Sealer(os.urandom(KEK_LEN))
    with pytest.raises(SealingError, match="wrong key-encryption key"):
        other.open(blob, "x")


@pytest.mark.parametrize("where", [0, 9, 20, -1])
def test_tampered_value_fails_integrity(where: int) -> None:
    kek = os.urandom(KEK_LEN)
    blob = bytearray(Sealer(kek).seal(b'{"format": "stek-keyring"}'))
    blob[where] ^= 1
    with pytest.raises(SealingError):
        Sealer(kek).open(bytes(blob), "x")


def test_truncated_value_is_refused() -> None:
    kek = os.urandom(KEK_LEN)
    with pytest.raises(SealingError, match="truncated"):
        Sealer(kek).open(Sealer(kek).seal(b"x")[:30], "x")


def test_plaintext_ring_refused_when_a_kek_is_set() -> None:
    """Otherwise anyone able to write the store could inject keys they know."""
    with pytest.raises(SealingError, match="unsealed"):
        Sealer(os.urandom(KEK_LEN)).open(ring_with_keys().to_bytes(), "x")


def test_sealed_ring_refused_in_plaintext_mode() -> None:
    blob = Sealer(os.urandom(KEK_LEN)).seal(b"{}")
    with pytest.raises(SealingError, match="give its key-encryption key"):
        Plaintext().open(blob, "x")


def test_older_kek_still_opens() -> None:
    old, new = os.urandom(KEK_LEN), os.urandom(KEK_LEN)
    blob = Sealer(old).seal(b"ring")
    both = Sealer(new, (old,))
    assert both.open(blob, "x") == b"ring"
    assert both.seal(b"ring")[9:17].hex() == kek_id(new)


def test_no_kek_is_refused_with_a_way_out() -> None:
    with pytest.raises(StekError, match="stek kek PATH") as info:
        sealer_from("redis://h", env={})
    assert "--insecure-plaintext" in str(info.value)


def test_insecure_plaintext_must_be_explicit_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(sealer_from("redis://h", insecure_plaintext=True, env={}), Plaintext)
    assert "INSECURE" in caplog.text and "PLAINTEXT" in caplog.text
    assert isinstance(sealer_from("redis://h", env={"STEK_INSECURE_PLAINTEXT": "1"}), Plaintext)
    with pytest.raises(StekError):
        sealer_from("redis://h", insecure_plaintext=False, env={"STEK_INSECURE_PLAINTEXT": "1"})


def test_kek_from_environment_and_precedence(tmp_path: Path) -> None:
    a, b = os.urandom(KEK_LEN), os.urandom(KEK_LEN)
    write_kek_file(tmp_path / "a.kek", a)
    env = {"STEK_KEK": base64.b64encode(b).decode()}
    assert sealer_from("r", env=env).kek_id == kek_id(b)
    env["STEK_KEK_FILE"] = str(tmp_path / "a.kek")
    assert sealer_from("r", env=env).kek_id == kek_id(a)
    assert sealer_from("r", kek=b, env=env).kek_id == kek_id(b)
    assert sealer_from("r", kek=base64.b64encode(b).decode(), env={}).kek_id == kek_id(b)


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"short").decode(),
                                  base64.b64encode(bytes(32)).decode()])
def test_bad_kek_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.kek"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError):
        read_kek_file(path)


def test_kek_file_is_0600_atomic_and_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "fleet.kek"
    kek = write_kek_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_kek_file(path) == [kek]
    assert [p.name for p in path.parent.iterdir()] == ["fleet.kek"]  # no temp file left
    with pytest.raises(StekError, match="refusing"):
        write_kek_file(path)
    assert read_kek_file(path) == [kek]
    assert write_kek_file(path, force=True) != kek


def test_update_returns_what_it_wrote_or_the_current_ring() -> None:
    store = FakeShared(Sealer(os.urandom(KEK_LEN)))
    with pytest.raises(NotInitialized):
        store.read()
    with pytest.raises(NotInitialized):
        store.update(lambda cur: None)
    first = init_ring(store, POLICY, now=BASE).ring
    current = store.update(lambda cur: cur)
    assert current.keys == first.keys
    assert store.update(lambda cur: None).keys == first.keys
    new = Keyring(POLICY, first.keys, 99)
    assert store.update(lambda cur: new) is new


def test_wrong_kek_overwrites_nothing() -> None:
    cell: dict[str, object] = {"value": None, "version": 0}
    init_ring(FakeShared(Sealer(os.urandom(KEK_LEN)), cell), POLICY, now=BASE)
    before = dict(cell)
    wrong = FakeShared(Sealer(os.urandom(KEK_LEN)), cell)
    with pytest.raises(SealingError):
        rotate(wrong, now=BASE + 10 * STEP)
    with pytest.raises(SealingError):
        wrong.update(lambda cur: Keyring(POLICY))
    assert cell == before


def test_racing_threads_write_one_key_per_slot() -> None:
    """Optimistic retries: 8 threads over 30 slots leave 30 new keys, each written once."""
    store = FakeShared(Sealer(os.urandom(KEK_LEN)))
    init_ring(store, POLICY, now=BASE)
    added: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        for i in range(1, 31):
            r = rotate(store, now=BASE + i * STEP)
            with lock:
                added.extend(k.name.hex() for k in r.added)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ring = store.read()
    assert len(added) == len(set(added)) == 30
    assert len(ring) == 31 and ring.generation == 31
    assert store.ops["cas"] - store.ops["conflict"] == 31


def test_reseal_keeps_every_key_and_switches_kek() -> None:
    old, new = Sealer(os.urandom(KEK_LEN)), Sealer(os.urandom(KEK_LEN))
    cell: dict[str, object] = {"value": None, "version": 0}
    store = FakeShared(old, cell)
    init_ring(store, POLICY, now=BASE)
    rotate(store, now=BASE + STEP)
    before = store.read()
    assert store.reseal(new).keys == before.keys
    assert FakeShared(new, cell).read().keys == before.keys
    with pytest.raises(SealingError):
        FakeShared(old, cell).read()


def test_reprs_and_errors_hold_no_secret() -> None:
    kek = os.urandom(KEK_LEN)
    s = Sealer(kek)
    for text in (repr(s), s.describe, repr(FakeShared(s))):
        assert kek.hex() not in text and base64.b64encode(kek).decode() not in text
    with pytest.raises(SealingError) as info:
        Sealer(os.urandom(KEK_LEN)).open(s.seal(b"x"), "x")
    assert kek.hex() not in str(info.value)
