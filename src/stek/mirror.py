"""``stek agent --mirror``: one host's local copy of the fleet ring, for its workers.

Without a mirror, every worker process that calls ``stek.install()`` on a
fleet store opens its own store connections and holds the key-encryption
key (KEK): a fleet of 1,000 hosts with 10 workers each is 10,000 Redis
subscribers (Redis refuses clients past ``maxclients``, 10,000 by default)
and 10,000 processes able to forge the ring.  With ``stek agent --mirror
file:PATH`` the agent, the one process on the host that holds the KEK and
the store's credentials, follows the fleet store and keeps the ring, opened,
in a local keyring file; workers read it with ``STEK_STORE=file:PATH`` and
need neither.  The fleet store sees one client per host.

* The file is written by :func:`stek._atomic.write_file` (temporary file,
  fsync, ``rename(2)``, fsync of the directory): readers see the old ring or
  the new one, never half of one.  It is rewritten only when its bytes
  change, so a pass that changed nothing wakes no worker.
* Mode 0600, or 0640 with ``--mirror-group NAME`` for workers that run as
  another user in that group.  The directory then gets that group and the
  set-group-ID bit (mode 2750), so the temporary file is created in the
  group already (``open(2)``: "if the set-group-ID bit is set on the parent
  directory, then the group ownership is taken from the parent directory")
  and no reader ever sees the new file with the wrong group.
* Missing directories are created 0700 whatever the umask (0711 above a
  shared one, so the group can reach it); an existing directory must belong
  to this user or root and be writable by no one else, as for exports
  (:func:`stek._atomic.unsafe_dir_reason`).
* A worker must not rotate a mirror (its write would be overwritten by the
  next pass, and its keys would exist on one host only), so ``stek rotate``
  and ``stek agent --store file:MIRROR`` refuse it (:func:`refuse_rotation`).
  That a file is a mirror is configuration first: workers read it as ``file:PATH?mirror=1``
  (the agent's default path, :data:`DEFAULT_PATH`, needs no option), so a
  worker that starts before the agent has written the file (the fleet store
  unreachable at boot) never creates a ring there, and ``install(rotate=True)``
  on a mirror warns once and serves it read-only.  The file also says it:
  it is a normal stek keyring plus one top-level field, ``MARKER``, naming
  the store it mirrors; a file store refuses to write over it, checked again
  under the file's lock, which the agent holds while it writes
  (:meth:`stek.stores.file.FileStore.update`), so no writer drops the marker.
* Through a store outage the agent's passes fail before they reach the
  mirror, so the file keeps the last ring and workers keep serving it, as a
  server does from its last snapshot.
* The writer refuses to replace a file that is not a mirror (a host's own
  keyring, or anything else): the operator must move it first.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._atomic import ensure_dir, unsafe_dir_reason, write_file
from .errors import ConfigError, MirroredRing, StoreError
from .keyring import Keyring
from .stores import KeyStore, open_store
from .stores.file import MIRROR_MARKER, MIRROR_PATH, FileStore, mirrored
from .stores.file import marked_source as _marked_source
from .stores.url import scrub

if TYPE_CHECKING:
    from ._mirror_metrics import MirrorCollector as MirrorCollector
    from .agent import Agent

log = logging.getLogger("stek.mirror")

#: The top-level JSON field that marks a keyring file as a mirror.
MARKER = MIRROR_MARKER
#: tmpfs, so keys never reach a disk and a reboot forgets them.
DEFAULT_PATH = MIRROR_PATH
DEFAULT_URL = f"file:{DEFAULT_PATH}"
FILE_MODE = 0o600
GROUP_FILE_MODE = 0o640
GROUP_DIR_MODE = 0o2750  # setgid: files created inside take the directory's group


# -- the marker ---------------------------------------------------------------------


def read_marker(store: FileStore) -> str | None:
    """The store the file mirrors, or None if it is missing or a keyring that is no mirror.

    Read as the file store reads the ring (:meth:`FileStore.read_bytes`: no
    symbolic link, no FIFO, owner and mode checked, size capped) and parsed
    as it parses it (:func:`~stek.keyring.parse_document`: depth capped).
    Raises the StoreError that reading the ring itself would raise.
    """
    data = store.read_bytes()
    return _marked_source(data, str(store.path)) if data is not None else None


def mirror_source(store: KeyStore | str | os.PathLike[str]) -> str | None:
    """The store a keyring file mirrors, or None if it is not a mirror (or not a file store).

    ``store``: a store, a store URL or a path.  A store configured as a mirror
    (``file:PATH?mirror=1``, :data:`DEFAULT_PATH`) is one whatever the file
    holds, even before it exists.  Otherwise unreadable or invalid files
    answer None: reading them is the caller's business, and its own read
    (through the same checks) says what is wrong.
    """
    configured = None
    try:
        if isinstance(store, str):
            scheme, sep, _ = store.strip().partition(":")
            if sep and scheme.lower() != "file" and not store.startswith(("/", ".", "~")):
                return None  # redis://, etcd://, memory: (never opened here)
            # file:PATH?owner=NAME: the query is the store's to parse, never part of the path.
            store = open_store(store)
        elif isinstance(store, os.PathLike):
            store = FileStore(store)
        if not isinstance(store, FileStore):
            return None
        configured = "the fleet store" if store.mirror else None
        return read_marker(store) or configured
    except (StoreError, ConfigError):
        return configured


def refuse_rotation(store: KeyStore, advice: str | None = None) -> None:
    """Raise :class:`MirroredRing` if ``store`` is a mirror: the one check every writer
    but the agent makes (rotators, ``stek init``).  ``advice`` replaces the default
    last clause of the message."""
    source = mirror_source(store)
    if source is not None:
        raise mirrored(store.url, source, advice)


def mirror_bytes(ring: Keyring, source: str) -> bytes:
    """The mirror file's content: the ring as the file store writes it, plus the marker."""
    doc = ring.to_dict()
    doc[MARKER] = {"source": source}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


# -- the writer ---------------------------------------------------------------------


def parse_target(text: str) -> Path:
    """``--mirror file:PATH`` (or ``file://PATH``, or an absolute path) -> PATH."""
    scheme, sep, rest = text.strip().partition(":")
    if sep and scheme.lower() == "file":
        path = rest[2:] if rest.startswith("//") else rest
    elif text.startswith("/"):
        path = text
    else:
        raise ConfigError(f"--mirror {scrub(text)!r}: the mirror is a local file: use file:PATH")
    if not path or "?" in path:
        raise ConfigError(f"--mirror {scrub(text)!r}: use file:PATH (a plain path, no options)")
    return Path(path).expanduser().absolute()


def group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        raise ConfigError(f"--mirror-group {name!r}: no such group") from None


class Mirror:
    """Keeps one local file equal to the ring each agent pass read (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str], *, source: str, group: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.source = source
        self.gid = group_id(group) if group is not None else None
        self.mode = GROUP_FILE_MODE if self.gid is not None else FILE_MODE
        self.clock = clock
        # Health, read by /metrics and /healthz.
        self.writes = 0
        self.failures = 0
        self.last_ok: float | None = None
        self.error: str | None = None
        self.generation: int | None = None

    def __repr__(self) -> str:
        return f"Mirror({str(self.path)!r}, source={self.source!r})"

    @property
    def url(self) -> str:
        return f"file:{self.path}"

    def prepare(self, store: KeyStore) -> None:
        """Check the set-up before the first pass; raise ConfigError with what to change."""
        if isinstance(store, FileStore) and store.path.absolute() == self.path:
            raise ConfigError(f"--mirror {self.path} is the agent's own --store")
        directory = self.path.parent
        try:
            reason = unsafe_dir_reason(directory)
        except OSError as exc:
            raise ConfigError(f"--mirror {self.path}: cannot use {directory}: "
                              f"{exc.strerror}") from exc
        if reason is not None:  # the rule exports follow (stek.export.write)
            raise ConfigError(f"--mirror {self.path}: refusing to write keys under {directory}: "
                              f"it is {reason}")
        try:
            source = read_marker(FileStore(self.path))
        except StoreError as exc:
            raise ConfigError(f"--mirror: {exc}; move it away or choose another path") from exc
        if source is None and os.path.lexists(self.path):
            raise ConfigError(
                f"--mirror {self.path}: the file exists and is not a stek mirror (a host's own "
                f"keyring?); move it away or choose another path"
            )
        try:
            if self.gid is None:
                ensure_dir(directory)  # and missing parents, 0700 whatever the umask
            else:
                # Missing parents: searchable by the workers (0711), never listable;
                # the mirror's own directory admits the group alone (_share_dir).
                ensure_dir(directory.parent, 0o711)
                ensure_dir(directory, 0o750)
                self._share_dir()
        except OSError as exc:
            raise ConfigError(f"--mirror {self.path}: cannot prepare {directory}: "
                              f"{exc.strerror}") from exc

    def _share_dir(self) -> None:
        assert self.gid is not None
        d = self.path.parent
        st = d.stat()
        if st.st_gid != self.gid:
            os.chown(d, -1, self.gid)
        if stat.S_IMODE(st.st_mode) & GROUP_DIR_MODE != GROUP_DIR_MODE or \
                stat.S_IMODE(st.st_mode) & 0o002:
            os.chmod(d, (stat.S_IMODE(st.st_mode) | GROUP_DIR_MODE) & ~0o002)

    def write(self, ring: Keyring) -> bool:
        """Make the file hold ``ring``; True if it changed.  Never raises for I/O errors.

        A failure is logged, counted and shown by /healthz; the next pass tries
        again, and meanwhile the file keeps the last ring it held.
        """
        try:
            # Under the file store's lock: a writer that checked for a mirror
            # under it (FileStore.update) writes before this, or sees the marker.
            with FileStore(self.path).locked():
                changed = write_file(self.path, mirror_bytes(ring, self.source), self.mode)
            if self.gid is not None and os.stat(self.path).st_gid != self.gid:
                os.chown(self.path, -1, self.gid)  # a directory that lost its setgid bit
        except (OSError, StoreError) as exc:
            self.failures += 1
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            message = f"cannot write {self.path}: {why}"
            if message != self.error:
                log.warning("mirror: %s; keeping the last ring there, retrying next pass",
                            message)
            self.error = message
            return False
        if self.error is not None:
            log.info("mirror %s is written again", self.path)
        self.error = None
        self.last_ok = self.clock()
        self.generation = ring.generation
        if changed:
            self.writes += 1
            log.info("mirror %s: generation %d, %d key(s)", self.path, ring.generation, len(ring))
        return changed

    def sync(self, ring: Keyring) -> None:
        """The agent hook: :meth:`write`, result unused."""
        self.write(ring)

    def health(self, now: float) -> list[str]:
        return [f"mirror {self.path}: {self.error}"] if self.error is not None else []

    def attach(self, agent: Agent) -> None:
        """Write after every pass of ``agent`` and report through its /healthz."""
        agent.on_ring(self.sync)
        agent.health_checks.append(self.health)


def open_mirror(target: str, group: str | None, store: KeyStore) -> Mirror:
    """``--mirror`` / ``--mirror-group`` for ``store``: a prepared :class:`Mirror`."""
    mirror = Mirror(parse_target(target), source=store.url, group=group)
    mirror.prepare(store)
    return mirror


def __getattr__(name: str) -> Any:
    # The collector needs prometheus_client, which only the agent loads:
    # ``import stek`` (and every server that installs a ring) stays without it.
    if name == "MirrorCollector":
        from ._mirror_metrics import MirrorCollector
        return MirrorCollector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_URL",
    "MARKER",
    "Mirror",
    "MirrorCollector",
    "MirroredRing",
    "mirror_bytes",
    "mirror_source",
    "open_mirror",
    "parse_target",
    "read_marker",
    "refuse_rotation",
]
