"""The embedded default store: one keyring file on the local machine.

* The file is created with mode 0600 inside a 0700 directory, and replaced
  atomically: write a temporary file beside it, fsync, rename over, fsync the
  directory.  Readers see the old ring or the new one, never half of one.
* Every read-modify-write holds an advisory ``flock`` on ``PATH.lock``, so
  concurrent processes never lose a key and never create two for one slot.
* Content that is not a valid stek keyring raises StoreCorrupt and is never
  overwritten.
* Nothing another user could have planted is trusted: the keyring and its
  lock are opened with ``O_NOFOLLOW`` (a symbolic link is refused, never
  followed), must be regular files owned by this user or root, and the
  keyring must not be group- or world-writable.  ``file:PATH?owner=NAME``
  also trusts a keyring owned by user NAME (a per-host mirror written by the
  agent's user and read by workers running as another).  Missing parent
  directories are created 0700 whatever the umask.
* Change notification: one inotify watch on the file's directory, shared by
  the whole process, or one shared ``stat()`` loop (see stek.stores._filewatch).
* A mirror (``stek agent --mirror``, :mod:`stek.mirror`) is never written
  through a file store.  That it is one is configuration: ``file:PATH?mirror=1``,
  or the agent's default path :data:`MIRROR_PATH`, so a worker that starts
  before the agent has written the file neither creates a ring there nor waits
  for a lock it may not take.  A file that says it is one (the top-level
  :data:`MIRROR_MARKER` field the agent writes) is refused too, checked again
  under the lock before every write: a writer that found no mirror a moment
  earlier never replaces one that appeared since, and drops no marker.

Prefer a tmpfs path (``/run``, ``$XDG_RUNTIME_DIR``): keys then never reach a
disk, and a reboot forgets them, as forward secrecy wants.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl

from .._atomic import ensure_dir, unsafe_reason, write_file
from ..errors import ConfigError, NotInitialized, StoreError, StoreUnavailable
from ..errors import MirroredRing as MirroredRing  # its home; re-exported for old imports
from ..keyring import MAX_RING_BYTES, Keyring, parse_document
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


def _uid_of(name: str) -> int:
    try:
        return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ConfigError(f"file store: owner={name!r}: no such user") from None


#: The top-level JSON field that marks a keyring file as a mirror (stek.mirror).
MIRROR_MARKER = "stek_mirror"
#: Where ``stek agent --mirror`` keeps its mirror by default: a mirror by configuration.
#: tmpfs, so keys never reach a disk and a reboot forgets them.
MIRROR_PATH = Path("/run/stek/mirror.json")
#: ``?mirror=`` values that say yes.
_YES = ("1", "yes", "true", "on")


def mirrored(url: str, source: str, advice: str | None = None) -> MirroredRing:
    """The refusal to write the mirror ``url`` of ``source``; ``advice`` ends it."""
    advice = advice or "rotate the fleet store (the agent does), and install without rotate=True"
    return MirroredRing(f"{url} is a mirror of {source} kept by 'stek agent --mirror': it is "
                        f"read-only here; {advice}")


def marked_source(data: bytes, where: str) -> str | None:
    """The store a keyring file's bytes say they mirror, or None if they carry no marker.

    Parsed as the ring itself is (:func:`~stek.keyring.parse_document`: size
    and depth capped); raises the StoreError reading the ring would raise.
    """
    doc = parse_document(data, where)
    marker = doc.get(MIRROR_MARKER) if isinstance(doc, dict) else None
    if not isinstance(marker, dict):
        return None
    source = marker.get("source")
    # The source is shown in one-line errors: nothing but a printable string.
    return source if isinstance(source, str) and source.isprintable() else "a fleet store"


#: open(2) flags for the keyring and its lock: never follow a symbolic link
#: (ELOOP), never block on a FIFO planted in its place.
#: Where ``stek agent --mirror`` keeps the ring for this host's workers (tmpfs: keys
#: never reach a disk); stek.mirror's default.
MIRROR_PATH = Path("/run/stek/mirror.json")
_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FileStore:
    """A keyring in one local file (URL ``file:PATH``, ``file:PATH?owner=NAME&mirror=1``)."""

    def __init__(self, path: str | os.PathLike[str], owner: str | None = None, *,
                 mirror: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.owner = owner
        self._owners = (_uid_of(owner),) if owner else ()
        #: A mirror by configuration: never written through this store.
        self.mirror = mirror or self.path.absolute() == MIRROR_PATH
        query = [f"owner={owner}"] if owner else []
        query += ["mirror=1"] if mirror else []
        self.url = f"file:{self.path}" + (f"?{'&'.join(query)}" if query else "")
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @classmethod
    def from_url(cls, spec: str) -> FileStore:
        """``PATH``, ``PATH?owner=NAME``, ``PATH?mirror=1`` (what follows ``file:``)."""
        path, _, query = spec.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True))
        unknown = sorted(set(options) - {"owner", "mirror"})
        if unknown:
            raise ConfigError(f"file store: unknown option(s): {', '.join(unknown)} "
                              f"(file:PATH?owner=NAME&mirror=1)")
        mirror = options.get("mirror")
        if mirror is not None and mirror.lower() not in (*_YES, "0", "no", "false", "off"):
            raise ConfigError(f"file store: mirror={mirror!r}: use mirror=1")
        return cls(path, owner=options.get("owner") or None,
                   mirror=(mirror or "").lower() in _YES)

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    # -- reading ----------------------------------------------------------------
    def _why(self, exc: OSError) -> str:
        """``exc``'s reason, with the fix when another user's ring was denied to us."""
        if exc.errno not in (errno.EACCES, errno.EPERM):
            return exc.strerror or str(exc)
        return (f"{exc.strerror} (another user's ring: for workers running as another "
                f"user than the agent, run 'stek agent --mirror --mirror-group GROUP' and give "
                f"them STEK_STORE=file:{MIRROR_PATH}; see README.md, 'Workers running as another "
                f"user')")

    def _open_checked(self, path: Path, flags: int, what: str) -> int:
        """Open ``path`` without following a link; refuse what another user could plant."""
        fd = os.open(path, flags | _NOFOLLOW, 0o600)
        try:
            st = os.fstat(fd)
            reason = "not a regular file" if not stat.S_ISREG(st.st_mode) else \
                unsafe_reason(st, owners=self._owners)
            if reason is not None:
                raise StoreUnavailable(f"{path}: refusing this {what}: {reason}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_bytes(self) -> bytes | None:
        """The file's raw bytes (None if it does not exist), read with every check above.

        The one way stek reads a keyring file: :meth:`read`, :meth:`update` and
        the mirror marker (:func:`stek.mirror.mirror_source`) all go through it.
        Never blocks (``O_NONBLOCK``: a FIFO is refused as not a regular file)
        and reads at most ``MAX_RING_BYTES + 1`` bytes.  Raises StoreUnavailable.
        """
        try:
            fd = self._open_checked(self.path, os.O_RDONLY, "keyring")
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreUnavailable(
                    f"{self.path}: refusing this keyring: it is a symbolic link") from exc
            raise StoreUnavailable(f"{self.path}: cannot read: {self._why(exc)}") from exc
        try:
            with os.fdopen(fd, "rb") as f:
                # One byte more than a ring may hold: Keyring.from_bytes refuses it.
                return f.read(MAX_RING_BYTES + 1)
        except OSError as exc:
            raise StoreUnavailable(f"{self.path}: cannot read: {exc.strerror}") from exc

    def read(self) -> Keyring:
        data = self.read_bytes()
        if data is None:
            raise NotInitialized(f"{self.path}: no keyring yet (run 'stek init')")
        # Window lengths are checked against the policy; how far ahead a key
        # activates is checked where a KEK holder could plant one (shared
        # stores) and before every rotation (stek.rotation).
        return Keyring.from_bytes(data, str(self.path))

    # -- writing ----------------------------------------------------------------
    def refuse_mirror(self, data: bytes | None = None) -> None:
        """Raise :class:`MirroredRing` if this file is a mirror, by configuration or by
        the marker in ``data`` (its bytes; read now if None)."""
        if self.mirror:
            raise mirrored(self.url, "the fleet store")
        data = self.read_bytes() if data is None else data
        source = marked_source(data, str(self.path)) if data else None
        if source is not None:
            raise mirrored(self.url, source)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """This keyring's advisory lock (``flock`` on ``PATH.lock``), held by every writer."""
        try:
            ensure_dir(self.path.parent)
            fd = self._open_checked(self._lock_path, os.O_RDWR | os.O_CREAT, "lock file")
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else self._why(exc)
            raise StoreUnavailable(f"{self._lock_path}: cannot lock: {why}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def update(self, mutate: Mutator) -> Keyring:
        # Before the lock, too: a worker of another user may not take a mirror's.
        self.refuse_mirror()
        with self.locked():
            data = self.read_bytes()
            with contextlib.suppress(StoreError):  # a corrupt file: from_bytes says why
                self.refuse_mirror(data or b"")
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
