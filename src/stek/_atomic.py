"""Writing key files as docs/design.md ("Key files") asks: 0600, atomic, only on change.

A server may read a key file at any instant (nginx on reload, HAProxy on
start), so it must see the old content or the new one, never half of one:
write a temporary file in the same directory (created 0600, so no other
user can ever open it), fsync, ``rename`` over the target (atomic within a
file system, POSIX ``rename(2)``), then fsync the directory so the rename
itself survives a crash.

A file whose bytes and mode are already right is left alone: its mtime and
inode do not move, and the caller learns "unchanged", so a reload runs only
when something a server reads has really changed.

Error messages name paths, never content: the content is key material.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

KEY_FILE_MODE = 0o600
DIR_MODE = 0o700


def _same(path: Path, data: bytes, mode: int) -> bool:
    """True when ``path`` already holds exactly ``data`` with ``mode`` (and is a regular file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return False
        if st.st_size != len(data):
            return False
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks) == data
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_file(path: str | os.PathLike[str], data: bytes, mode: int = KEY_FILE_MODE) -> bool:
    """Atomically make ``path`` hold ``data`` with ``mode``; False if it already did.

    Raises ``OSError`` (the caller translates it); the target is then untouched.
    """
    target = Path(path)
    if _same(target, data, mode):
        return False
    directory = target.parent
    tmp = directory / f".{target.name}.{os.getpid()}.{threading.get_ident()}.stek-tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have cleared bits of ``mode``
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return True


def ensure_dir(path: str | os.PathLike[str], mode: int = DIR_MODE) -> Path:
    """Create ``path`` and any missing parent with ``mode``, whatever the umask; return it.

    ``Path.mkdir(parents=True)`` gives the parents it creates 0777 minus the
    umask (0777 itself under umask 000), and ``mkdir(2)`` applies the umask
    to ``mode`` too: so each directory created here is chmod-ed explicitly.
    Directories that already exist are left as they are.
    """
    p = Path(path)
    missing = []
    for d in (p, *p.parents):
        if d.is_dir():
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # created by another process meanwhile: not ours to chmod
        os.chmod(d, mode)
    return p


def unsafe_reason(st: os.stat_result, *, owners: tuple[int, ...] = (),
                  forbidden: int = 0o022) -> str | None:
    """Why a file or directory with status ``st`` must not be trusted, or None.

    Trusted: owned by the current user, by root, or by one of ``owners``,
    and with none of the ``forbidden`` mode bits (group/world-writable by
    default).  Otherwise another user could have planted it, or could
    change it (a shared directory such as /tmp).
    """
    uid = os.geteuid()
    if st.st_uid not in (uid, 0, *owners):
        return f"owned by uid {st.st_uid}, not by this user (uid {uid}) or root"
    bad = stat.S_IMODE(st.st_mode) & forbidden
    if bad:
        who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if bad & bits)
        what = " and ".join(w for w, bits in (("readable", 0o044), ("writable", 0o022))
                            if bad & bits)
        return f"{what} by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def unsafe_dir_reason(directory: str | os.PathLike[str]) -> str | None:
    """Why keys must not be written under ``directory``, or None.

    None also when it does not exist yet (:func:`ensure_dir` creates it, 0700,
    or fails naming what is in the way: ENOTDIR, a file where a parent
    should be).  An existing one must pass :func:`unsafe_reason`: another user
    could read key files from it, or swap files in.  Raises OSError if it
    cannot be examined.
    """
    try:
        st = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return unsafe_reason(st)


def remove_file(path: str | os.PathLike[str]) -> bool:
    """Unlink ``path``; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
