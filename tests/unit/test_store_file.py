"""The embedded file store: permissions, atomic replace, locking, corrupt files."""

from __future__ import annotations

import os
import pwd
import stat
import threading
import time
from pathlib import Path

import pytest

from stek.errors import NotInitialized, StoreCorrupt, StoreUnavailable
from stek.keyring import Keyring
from stek.rotation import init_ring, rotate
from stek.schedule import Policy
from stek.stores import FileStore, open_store
from stek.stores.file import default_path


def test_new_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "sub" / "ring.json")
    init_ring(store, Policy())
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700


def test_replacement_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy())
    inode = os.stat(store.path).st_ino
    rotate(store, now=time.time() + 3600)
    assert os.stat(store.path).st_ino != inode  # renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ring.json", "ring.json.lock"]
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def test_read_of_missing_file_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(NotInitialized, match="stek init"):
        FileStore(tmp_path / "none.json").read()


def test_corrupt_file_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    path.write_bytes(b"this is not a keyring\n")
    before = (path.read_bytes(), os.stat(path).st_mtime_ns)
    store = FileStore(path)
    with pytest.raises(StoreCorrupt, match="not a stek keyring"):
        store.read()
    with pytest.raises(StoreCorrupt):
        rotate(store, create=Policy())
    with pytest.raises(StoreCorrupt):
        init_ring(store, Policy(), force=True)
    assert (path.read_bytes(), os.stat(path).st_mtime_ns) == before


def test_truncated_keyring_is_corrupt(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy())
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreCorrupt):
        store.read()


def test_unwritable_directory_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = FileStore(blocker / "ring.json")  # parent is a regular file
    with pytest.raises(StoreUnavailable):
        init_ring(store, Policy())


def test_concurrent_threads_create_one_key_per_slot(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    first = init_ring(FileStore(path), Policy(), now=1_000_000).ring
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        rotate(FileStore(path), now=1_000_000 + 3000)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ring = FileStore(path).read()
    assert len(ring) == 2
    assert ring.generation == first.generation + 1


def test_subscribe_sees_another_writer_within_a_second(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    init_ring(FileStore(path), Policy())
    seen = threading.Event()
    # In place when subscribe() returns: an inotify watch on the directory, or
    # the stat loop's baseline (stek.stores._filewatch).
    sub = FileStore(path).subscribe(seen.set)
    try:
        start = time.monotonic()
        rotate(FileStore(path), now=time.time() + 3600)
        assert seen.wait(1.0)
        assert time.monotonic() - start < 1.0
    finally:
        sub.close()


@pytest.mark.parametrize("form", ["file:{p}", "file://{p}", "{p}"])
def test_url_forms(tmp_path: Path, form: str) -> None:
    store = open_store(form.format(p=tmp_path / "r.json"))
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / "r.json"


def test_stek_store_environment_selects_the_store(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEK_STORE", f"file:{tmp_path / 'env.json'}")
    store = open_store()
    assert isinstance(store, FileStore) and store.path == tmp_path / "env.json"


def test_default_path_prefers_runtime_dir(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_path() == tmp_path / "stek" / "keyring.json"


def test_unknown_scheme_is_a_config_error() -> None:
    from stek.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown store URL"):
        open_store("ftp://example/ring")


def test_written_ring_reads_back(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "ring.json")
    ring = init_ring(store, Policy()).ring
    assert store.read() == ring
    assert isinstance(store.read(), Keyring)


# -- nothing another user could plant is trusted ---------------------------------------
# The suite runs as root here; another user is simulated with os.chown to nobody.

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def ring_file(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    init_ring(FileStore(path), Policy())
    return path


def _unchanged(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_keyring_owned_by_another_user_is_refused(ring_file: Path) -> None:
    os.chown(ring_file, NOBODY.pw_uid, -1)
    before = _unchanged(ring_file)
    with pytest.raises(StoreUnavailable, match=f"owned by uid {NOBODY.pw_uid}") as info:
        FileStore(ring_file).read()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreUnavailable, match="refusing this keyring"):
        rotate(FileStore(ring_file), now=time.time() + 7200)
    assert _unchanged(ring_file) == before


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_group_or_world_writable_keyring_is_refused(ring_file: Path, mode: int) -> None:
    os.chmod(ring_file, mode)
    with pytest.raises(StoreUnavailable, match="writable by"):
        FileStore(ring_file).read()
    os.chown(ring_file, NOBODY.pw_uid, -1)  # even from the user named in owner=
    with pytest.raises(StoreUnavailable, match="writable by"):
        open_store(f"file:{ring_file}?owner=nobody").read()


def test_owner_option_trusts_a_mirror_written_by_that_user(ring_file: Path) -> None:
    """A per-host mirror: written by the agent's user (0640), read by workers."""
    ring = FileStore(ring_file).read()
    os.chown(ring_file, NOBODY.pw_uid, -1)
    os.chmod(ring_file, 0o640)
    store = open_store(f"file:{ring_file}?owner=nobody")
    assert isinstance(store, FileStore) and store.url == f"file:{ring_file}?owner=nobody"
    assert store.read() == ring
    assert open_store(f"file:{ring_file}?owner={NOBODY.pw_uid}").read() == ring


def test_file_url_options_are_checked(tmp_path: Path) -> None:
    from stek.errors import ConfigError

    with pytest.raises(ConfigError, match="no such user"):
        open_store(f"file:{tmp_path / 'r.json'}?owner=no-such-user-here")
    with pytest.raises(ConfigError, match="unknown option"):
        open_store(f"file:{tmp_path / 'r.json'}?colour=blue")


def test_symlinked_keyring_is_refused_never_followed(tmp_path: Path, ring_file: Path) -> None:
    link = tmp_path / "link.json"
    link.symlink_to(ring_file)
    before = _unchanged(ring_file)
    for action in (lambda s: s.read(), lambda s: rotate(s, now=time.time() + 7200),
                   lambda s: init_ring(s, Policy(), force=True)):
        with pytest.raises(StoreUnavailable, match="symbolic link"):
            action(FileStore(link))
    assert link.is_symlink() and _unchanged(ring_file) == before


def test_lock_symlink_is_never_followed(tmp_path: Path) -> None:
    """A planted PATH.lock -> elsewhere must not make the writer create (or open) elsewhere."""
    victim = tmp_path / "victim"
    path = tmp_path / "ring.json"
    (tmp_path / "ring.json.lock").symlink_to(victim)
    with pytest.raises(StoreUnavailable, match="lock: it is a symbolic link"):
        init_ring(FileStore(path), Policy())
    assert not victim.exists() and not path.exists()


def test_lock_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    lock = tmp_path / "ring.json.lock"
    lock.touch(mode=0o600)
    os.chown(lock, NOBODY.pw_uid, -1)
    with pytest.raises(StoreUnavailable, match="refusing this lock file"):
        init_ring(FileStore(path), Policy())
    assert not path.exists()


def test_fifo_in_place_of_the_keyring_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "ring.json"
    os.mkfifo(path, 0o600)
    with pytest.raises(StoreUnavailable, match="not a regular file"):
        FileStore(path).read()


def test_parent_directories_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = FileStore(tmp_path / "a" / "b" / "ring.json")
        init_ring(store, Policy())
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
