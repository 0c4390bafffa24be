"""Sealing (AES-256-GCM under a KEK) and the shared-store machinery, without servers.

A fake backend (a dict guarded by a version counter) stands in for Redis and
etcd here; the real ones are proven in test_store_redis.py / test_store_etcd.py.
"""

from __future__ import annotations

import base64
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stek import ConfigError, Keyring, NotInitialized, Policy, SealingError, StekError
from stek.errors import StoreCorrupt
from stek.keys import generate_key
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
    ring_fingerprint,
    sealer_from,
    write_kek_file,
)

STEP = 60
BASE = 28_333_334 * STEP
POLICY = Policy(rotate_every=STEP, accept_for=3600, publish_ahead=30)
RID = "fake ring"


class FakeShared(SharedStore[int]):
    """A value and a version in memory; the compare-and-set holds a lock."""

    def __init__(self, sealer: AnySealer, cell: dict[str, object] | None = None,
                 ring: str = RID) -> None:
        super().__init__("fake://", sealer)
        self._ring = ring
        self.cell = cell if cell is not None else {"value": None, "version": 0}
        self.lock = threading.Lock()

    @property
    def ring_id(self) -> str:
        return self._ring

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
    blob = s.seal(plain, RID, 3)
    assert blob[:9] == b"STEKSEAL\x02"
    assert blob[9:17].hex() == kek_id(kek)
    assert blob[17:25].hex() == ring_fingerprint(RID)
    assert blob[25:33] == (3).to_bytes(8, "big")
    assert len(blob) == 33 + 12 + len(plain) + 16
    assert s.open(blob, "x", RID) == (plain, 3)
    assert s.seal(plain, RID, 3) != blob  # a fresh nonce every time


def test_sealed_value_contains_no_key_bytes() -> None:
    ring = ring_with_keys()
    blob = Sealer(os.urandom(KEK_LEN)).seal(ring.to_bytes(), RID, 1)
    for k in ring.keys:
        for secret in (k.aes_key, k.hmac_key):
            for enc in (secret, base64.b64encode(secret), secret.hex().encode()):
                assert enc not in blob


def test_wrong_kek_is_named_as_such() -> None:
    blob = Sealer(os.urandom(KEK_LEN)).seal(b"{}", RID, 1)
    other = Sealer(os.urandom(KEK_LEN))
    with pytest.raises(SealingError, match="wrong key-encryption key"):
        other.open(blob, "x", RID)


@pytest.mark.parametrize("where", [0, 9, 20, 30, 40, -1])
def test_tampered_value_fails_integrity(where: int) -> None:
    kek = os.urandom(KEK_LEN)
    blob = bytearray(Sealer(kek).seal(b'{"format": "stek-keyring"}', RID, 1))
    blob[where] ^= 1
    with pytest.raises(SealingError):
        Sealer(kek).open(bytes(blob), "x", RID)


def test_truncated_value_is_refused() -> None:
    kek = os.urandom(KEK_LEN)
    with pytest.raises(SealingError, match="truncated"):
        Sealer(kek).open(Sealer(kek).seal(b"x", RID, 1)[:50], "x", RID)


def test_plaintext_ring_refused_when_a_kek_is_set() -> None:
    """Otherwise anyone able to write the store could inject keys they know."""
    with pytest.raises(SealingError, match="unsealed"):
        Sealer(os.urandom(KEK_LEN)).open(ring_with_keys().to_bytes(), "x", RID)


def test_sealed_ring_refused_in_plaintext_mode() -> None:
    blob = Sealer(os.urandom(KEK_LEN)).seal(b"{}", RID, 1)
    with pytest.raises(SealingError, match="give its key-encryption key"):
        Plaintext().open(blob, "x", RID)


def test_older_kek_still_opens() -> None:
    old, new = os.urandom(KEK_LEN), os.urandom(KEK_LEN)
    blob = Sealer(old).seal(b"ring", RID, 1)
    both = Sealer(new, (old,))
    assert both.open(blob, "x", RID) == (b"ring", 1)
    assert both.seal(b"ring", RID, 1)[9:17].hex() == kek_id(new)


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
    first = init_ring(store, POLICY, now=BASE).ring
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
    assert len(ring) == 31 and ring.generation == first.generation + 30
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
        Sealer(os.urandom(KEK_LEN)).open(s.seal(b"x", RID, 1), "x", RID)
    assert kek.hex() not in str(info.value)


# -- a writer without the KEK cannot steer readers --------------------------------------


def test_ring_copied_from_another_ring_under_the_same_kek_is_refused() -> None:
    """Staging into prod: genuine, same KEK, but sealed for another ring id."""
    sealer = Sealer(os.urandom(KEK_LEN))
    staging: dict[str, object] = {"value": None, "version": 0}
    init_ring(FakeShared(sealer, staging, ring="redis db 0 key staging:keyring"), POLICY)
    prod: dict[str, object] = {"value": None, "version": 0}
    init_ring(FakeShared(sealer, prod, ring="redis db 0 key prod:keyring"), POLICY)
    reader = FakeShared(sealer, prod, ring="redis db 0 key prod:keyring")
    reader.read()
    prod["value"] = staging["value"]
    for store in (reader, FakeShared(sealer, prod, ring="redis db 0 key prod:keyring")):
        with pytest.raises(SealingError, match="sealed for another store") as info:
            store.read()
        assert "\n" not in str(info.value)
        with pytest.raises(SealingError, match="sealed for another store"):
            rotate(store)


def test_replayed_older_generation_is_refused_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    sealer = Sealer(os.urandom(KEK_LEN))
    cell: dict[str, object] = {"value": None, "version": 0}
    writer = FakeShared(sealer, cell)
    init_ring(writer, POLICY)
    old = cell["value"]
    newer = writer.update(lambda cur: cur.with_policy(POLICY) if cur else None)
    reader = FakeShared(sealer, cell)
    assert reader.read().generation == newer.generation
    cell["value"] = old  # a store writer replays a genuine older value
    for _ in range(2):
        with pytest.raises(SealingError, match=f"older than generation {newer.generation}") \
                as info:
            reader.read()
        assert "\n" not in str(info.value)
    # A rotator never builds on it either: it writes its newer ring back over it.
    restored = rotate(reader).ring
    assert restored.keys == newer.keys and restored.generation > newer.generation
    assert FakeShared(sealer, cell).read() == restored
    assert reader.rollbacks_refused == 3
    older = newer.generation - 1
    assert caplog.text.count(f"refusing keyring generation {older}") == 1  # logged once


def test_sealed_generation_must_match_the_ring() -> None:
    sealer = Sealer(os.urandom(KEK_LEN))
    cell: dict[str, object] = {"value": None, "version": 0}
    ring = init_ring(FakeShared(sealer, cell), POLICY).ring
    cell["value"] = sealer.seal(ring.to_bytes(), RID, ring.generation + 5)
    with pytest.raises(SealingError, match="does not match"):
        FakeShared(sealer, cell).read()


def test_format_1_value_is_refused_unless_resealed_as_format_1() -> None:
    kek = os.urandom(KEK_LEN)
    ring = ring_with_keys()
    header = b"STEKSEAL\x01" + bytes.fromhex(kek_id(kek))
    nonce = os.urandom(12)
    legacy = header + nonce + AESGCM(kek).encrypt(nonce, ring.to_bytes(), header)
    cell: dict[str, object] = {"value": legacy, "version": 1}
    store = FakeShared(Sealer(kek), cell)
    with pytest.raises(SealingError, match=r"format 1.*docs/fleet.md"):
        store.read()
    with pytest.raises(SealingError, match=r"refusing to re-seal it \(--format-1"):
        store.reseal(Sealer(kek))
    resealed = store.reseal(Sealer(kek), format_1=True, now=BASE + 2 * STEP)
    assert resealed.keys == ring.keys and resealed.generation == ring.generation + 1
    assert isinstance(cell["value"], bytes) and cell["value"][8] == 2
    assert FakeShared(Sealer(kek), cell).read() == resealed


def test_planted_key_beyond_the_policy_is_refused() -> None:
    """A KEK holder cannot plant a key that outlives the ring's policy."""
    sealer = Sealer(os.urandom(KEK_LEN))
    cell: dict[str, object] = {"value": None, "version": 0}
    ring = init_ring(FakeShared(sealer, cell), POLICY).ring
    now = int(time.time())
    far = generate_key(size=80, activates_at=now + 86400, retires_at=now + 86400 + STEP,
                       expires_at=now + 86400 + STEP + 3600)
    planted = Keyring(POLICY, (*ring.keys, far), ring.generation + 1)
    cell["value"] = sealer.seal(planted.to_bytes(), RID, planted.generation)
    with pytest.raises(StoreCorrupt, match="further ahead than the policy's publish_ahead"):
        FakeShared(sealer, cell).read()
    with pytest.raises(StoreCorrupt, match="publish_ahead"):
        rotate(FakeShared(sealer, cell))


# -- KEK files another user could read or plant are refused ------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_kek_file_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "fleet.kek"
    write_kek_file(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=r"refusing it: .* by (group|others)") as info:
        read_kek_file(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        sealer_from("redis://h", kek_file=path, env={})


def test_kek_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    import pwd

    path = tmp_path / "fleet.kek"
    write_kek_file(path)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(ConfigError, match="owned by uid"):
        read_kek_file(path)


def test_kek_file_behind_a_symlink_is_read_and_checked(tmp_path: Path) -> None:
    """Secret mounts are links to the real file: the file they lead to is what counts."""
    real = tmp_path / "data" / "fleet.kek"
    kek = write_kek_file(real)
    link = tmp_path / "fleet.kek"
    link.symlink_to(real)
    assert read_kek_file(link) == [kek]
    os.chmod(real, 0o644)
    with pytest.raises(ConfigError, match="readable by group and others"):
        read_kek_file(link)


def test_kek_file_parents_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_kek_file(tmp_path / "a" / "b" / "fleet.kek")
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
