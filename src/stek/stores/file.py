"""The embedded default store: one keyring file on the local machine.

* The file is created with mode 0600 inside a 0700 directory, and replaced
  atomically: write a temporary file beside it, fsync, rename over, fsync the
  directory.  Readers see the old ring or the new one, never half of one.
* Every read-modify-write holds an advisory ``flock`` on ``PATH.lock``, so
  concurrent processes never lose a key and never create two for one slot.
* Content that is not a valid stek keyring raises StoreCorrupt and is never
  overwritten.
* Change notification: one inotify watch on the file's directory, shared by
  the whole process, or one shared ``stat()`` loop (see stek.stores._filewatch).

Prefer a tmpfs path (``/run``, ``$XDG_RUNTIME_DIR``): keys then never reach a
disk, and a reboot forgets them, as forward secrecy wants.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .._atomic import write_file
from ..errors import NotInitialized, StoreUnavailable
from ..keyring import Keyring
from ._filewatch import watch
from .base import Mutator, Subscription

log = logging.getLogger("stek.stores.file")


def default_path() -> Path:
    """Where ``file:`` stores live when no path is given.

    ``$XDG_RUNTIME_DIR/stek/keyring.json`` when set (a per-user tmpfs), else
    ``/run/stek/keyring.json`` for root, else ``~/.local/state/stek/keyring.json``.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "stek" / "keyring.json"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/run/stek/keyring.json")
    return Path.home() / ".local" / "state" / "stek" / "keyring.json"


class FileStore:
    """A keyring in one local file (URL ``file:PATH``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.url = f"file:{self.path}"
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    # -- reading ----------------------------------------------------------------
    def _read_bytes(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: cannot read: {exc.strerror}") from exc

    def read(self) -> Keyring:
        data = self._read_bytes()
        if data is None:
            raise NotInitialized(f"{self.path}: no keyring yet (run 'stek init')")
        return Keyring.from_bytes(data, str(self.path))

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    # -- writing ----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: cannot lock: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def update(self, mutate: Mutator) -> Keyring:
        with self._locked():
            data = self._read_bytes()
            # A corrupt file raises here, before anything is written.
            current = Keyring.from_bytes(data, str(self.path)) if data is not None else None
            new = mutate(current)
            if new is None or new is current:
                if current is None:
                    raise NotInitialized(f"{self.path}: no keyring yet (run 'stek init')")
                return current
            self._write_atomic(new.to_bytes())
            return new

    def _write_atomic(self, data: bytes) -> None:
        try:
            write_file(self.path, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreUnavailable(f"{self.path}: disk full, ring left unchanged") from exc
            raise StoreUnavailable(f"{self.path}: cannot write: {exc.strerror}") from exc

    def subscribe(self, on_change: Callable[[], None]) -> Subscription:
        return watch(self.path, on_change)

    def close(self) -> None:
        pass
