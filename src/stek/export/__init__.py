"""Exporters: a ring laid out as each TLS server reads its ticket keys.

Every exporter is a pure function ``render(ring, now, out) -> Rendered``: the
bytes of each file, in the layout the server's own source reads (each module
cites the function it checked).  :func:`write` then puts them on disk with
the rules of :mod:`stek._atomic` (0600, atomic, only on change) and
reports what changed, so a reload runs only when a server would see
something new.

Which keys a server gets, and in which order, follows one rule drawn from the
lifecycle table (:mod:`stek.schedule`):

1. the encrypting key (newest active one) first: every server here encrypts
   with one designated key;
2. then pending keys (published ahead: a server must already hold a key
   before any other server encrypts with it);
3. then the other keys still inside their accept window, newest first;
4. expired keys never leave the ring.

Servers that hold fewer keys (HAProxy: 3, Apache: 1) get a documented
subset.  Key bytes appear only in the files; errors name keys by their
public 16-byte name, in hex.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic import ensure_dir, fsync_dir, remove_file, unsafe_dir_reason, write_file
from ..errors import ExportError as ExportError
from ..keyring import Keyring
from ..keys import TicketKey
from ..schedule import State, state_of

FORMATS = ("nginx", "haproxy", "apache", "envoy", "openssl")




@dataclass(frozen=True)
class ServingOrder:
    """A ring's live keys in the order servers want them (see the module docstring)."""

    encrypting: TicketKey
    pending: tuple[TicketKey, ...]
    decrypting: tuple[TicketKey, ...]

    @property
    def keys(self) -> tuple[TicketKey, ...]:
        return (self.encrypting, *self.pending, *self.decrypting)


def serving_order(ring: Keyring, now: float) -> ServingOrder:
    """Split ``ring`` at ``now``; raise :class:`ExportError` if no key is active.

    Every server format here must name *some* key to encrypt with; exporting
    a decrypt-only key in that place would stretch its life, so stek refuses.
    """
    enc = ring.encrypting_key(now)
    if enc is None:
        raise ExportError(
            f"keyring generation {ring.generation} has no active key at this time: run "
            f"'stek rotate' (or 'stek agent') first"
        )
    pending = sorted((k for k in ring.keys if state_of(k, now) is State.PENDING),
                     key=lambda k: k.activates_at)
    rest = sorted(
        (k for k in ring.keys
         if k is not enc and state_of(k, now) in (State.ACTIVE, State.DECRYPT_ONLY)),
        key=lambda k: k.activates_at, reverse=True,
    )
    return ServingOrder(enc, tuple(pending), tuple(rest))


@dataclass(frozen=True)
class Rendered:
    """What a format writes.

    ``directory``: the output is a folder holding ``files`` (name -> bytes),
    written in order (key files first, the index that names them last);
    files in it matching ``stale`` that are not in ``files`` are removed
    afterwards (only stek's own file names ever match).  Otherwise the output
    is a single file and ``files`` has exactly one entry, named ``""``.
    """

    format: str
    files: tuple[tuple[str, bytes], ...]
    directory: bool = False
    stale: re.Pattern[str] | None = None
    encrypting: bytes = b""
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def content(self) -> bytes:
        """The single file's bytes (single-file formats only)."""
        if self.directory:
            raise ExportError(f"{self.format}: a directory format has no single content")
        return self.files[0][1]


@dataclass(frozen=True)
class WriteResult:
    path: Path
    written: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()
    unchanged: tuple[Path, ...] = ()
    #: The directory this write created (only ever the last component), if any.
    created: Path | None = None

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


#: File names of per-key files: the key's public name in hex (see nginx.py).
KEY_FILE_RE = re.compile(r"^[0-9a-f]{32}\.key$")


def key_file_name(key: TicketKey) -> str:
    return f"{key.name.hex()}.key"


def write(rendered: Rendered, out: str | os.PathLike[str]) -> WriteResult:
    """Put ``rendered`` at ``out`` (a directory or a file); only what differs is written."""
    path = Path(out).expanduser().absolute()
    written: list[Path] = []
    unchanged: list[Path] = []
    removed: list[Path] = []
    directory = path if rendered.directory else path.parent
    _check_dir(directory)
    created = _make_last(directory, rendered.format, path)
    try:
        if rendered.directory:
            for name, data in rendered.files:
                target = path / name
                (written if write_file(target, data) else unchanged).append(target)
            if rendered.stale is not None:
                keep = {name for name, _ in rendered.files}
                for entry in sorted(os.listdir(path)):
                    if entry not in keep and rendered.stale.match(entry) and \
                            remove_file(path / entry):
                        removed.append(path / entry)
                if removed:
                    fsync_dir(path)
        else:
            if path.is_dir():
                raise ExportError(f"{path} is a directory; the {rendered.format} format "
                                  f"writes one file")
            if write_file(path, rendered.content):
                written.append(path)
            else:
                unchanged.append(path)
    except OSError as exc:
        reason = _not_a_directory(path if rendered.directory else path.parent) or \
            exc.strerror or str(exc)
        raise ExportError(f"cannot write {rendered.format} keys under {path}: "
                          f"{reason}") from exc
    return WriteResult(path, tuple(written), tuple(removed), tuple(unchanged), created)


def _make_last(directory: Path, fmt: str, path: Path) -> Path | None:
    """Create ``directory`` (0700) if its parent exists; None if it already existed.

    Only the last component: a mistyped path (``/nonexistent/stek/nginx``)
    is an error, not a tree of new directories nobody looks at.
    """
    if directory.is_dir():
        return None
    blocked = _not_a_directory(directory)
    if blocked is not None:  # a file where a directory must be: the filesystem's error
        raise ExportError(f"cannot write {fmt} keys under {path}: {blocked}") \
            from NotADirectoryError(errno.ENOTDIR, blocked)
    parent = directory.parent
    if not parent.is_dir():
        why = f"{parent} does not exist"
        raise ExportError(f"cannot write {fmt} keys under {path}: {why} (stek creates only "
                          f"the last directory, {directory.name}: check the path, or create "
                          f"its parent first)")
    try:
        ensure_dir(directory)
    except OSError as exc:
        raise ExportError(f"cannot create {directory} for {fmt} keys: "
                          f"{exc.strerror or exc}") from exc
    return directory


def _not_a_directory(directory: Path) -> str | None:
    """Which part of ``directory`` exists but is not a directory (mkdir's EEXIST/ENOTDIR)."""
    for p in (directory, *directory.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else f"{p} is not a directory"
    return None


def _check_dir(directory: Path) -> None:
    """Refuse an existing directory another user owns or may write: keys go nowhere
    another user could read them from, or swap files in."""
    try:
        reason = unsafe_dir_reason(directory)
    except OSError as exc:
        # ENOTDIR (stat(2)): some component of the path is a file; name it.
        why = _not_a_directory(directory) or exc.strerror
        raise ExportError(f"cannot use {directory}: {why}") from exc
    if reason is not None:
        raise ExportError(f"refusing to write keys under {directory}: it is {reason}")


Renderer = Callable[[Keyring, float, Path], Rendered]


def renderer(fmt: str) -> Renderer:
    """The ``render`` function of format ``fmt``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    module = importlib.import_module(f"{__name__}.{fmt}")
    fn: Renderer = module.render
    return fn


def render(fmt: str, ring: Keyring, now: float, out: str | os.PathLike[str]) -> Rendered:
    """Lay ``ring`` out as ``fmt`` for a target at ``out`` (snippets hold absolute paths)."""
    return renderer(fmt)(ring, now, Path(out).expanduser().absolute())


def export(fmt: str, ring: Keyring, now: float, out: str | os.PathLike[str]) -> WriteResult:
    """Render and write: the one call behind ``stek export`` and the agent's targets."""
    return write(render(fmt, ring, now, out), out)


def is_directory_format(fmt: str) -> bool:
    return fmt in ("nginx", "envoy")


__all__ = [
    "FORMATS",
    "KEY_FILE_RE",
    "ExportError",
    "Rendered",
    "ServingOrder",
    "WriteResult",
    "export",
    "is_directory_format",
    "key_file_name",
    "render",
    "renderer",
    "serving_order",
    "write",
]
