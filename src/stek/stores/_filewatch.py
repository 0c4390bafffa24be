"""Change detection for file stores: one watch per process, however many subscribers.

A keyring file is replaced by ``rename(2)`` (stek._atomic), so a watch on
the file itself would follow the old inode and go stale: the *directory* is
watched, and events are matched by name (inotify(7): "When a directory is
monitored, inotify will return events for the directory itself, and for
files inside the directory").  Every subscription of the process shares one
inotify descriptor, read by the process's one background thread
(stek._reactor): no thread and no poll per subscriber.

Where inotify is missing (not Linux, no libc symbol, the watch limit of
``fs.inotify.max_user_watches`` reached) or the directory does not exist
yet, one shared loop compares ``stat()`` (inode, size, mtime) every
``POLL_INTERVAL`` seconds, and moves the subscription to inotify as soon as
its directory can be watched.

Notifications may be spurious (any event on the file's name); subscribers re-read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

from .._reactor import REACTOR, Timer
from .._serial import Serial

log = logging.getLogger("stek.stores.file")

#: Seconds between stat() polls where inotify is not used (well under the 1 s promise).
POLL_INTERVAL = 0.2

# <linux/inotify.h>
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
#: Whatever can change what a read of the file returns: a rename over it (how
#: stek writes), an in-place write, a deletion, a permission change.
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
        | IN_DELETE | IN_ONLYDIR)
# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
_EVENT = struct.Struct("iIII")

Signature = tuple[int, int, int] | None


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


class _Subscription:
    """One subscriber's callback for one file; ``close()`` stops it."""

    def __init__(self, hub: _Hub, path: Path, cb: Callable[[], None]) -> None:
        self.hub, self.path, self.cb = hub, path, cb
        self.dir = os.fsencode(path.parent)
        self.name = os.fsencode(path.name)
        self.wd: int | None = None  # set while inotify covers it; None: polled
        self.last: Signature = _signature(path)

    def close(self) -> None:
        self.hub.remove(self)

    def fire(self) -> None:
        try:
            self.cb()
        except Exception:  # a subscriber's failure must not stop the watch
            log.exception("keyring change subscriber failed")


class _Hub:
    """The process's file watches: one inotify descriptor, or one stat loop."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        # A garbage collection may run an application's finalizer that
        # uninstalls, in a thread that is inside this hub: the subscription it
        # closes waits until the hub's call it interrupted ends (stek._serial).
        self._serial = Serial()
        self._libc: ctypes.CDLL | None = None
        self._libc_tried = False
        self._fd = -1
        self._subs: set[_Subscription] = set()
        self._by_wd: dict[int, set[_Subscription]] = {}
        self._timer: Timer | None = None

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            # A forked child shares the parent's inotify descriptor: reading it
            # would steal the parent's events.  Start anew; owners re-subscribe.
            fd = self._fd
            self._reset()
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    @property
    def inotify(self) -> bool:
        """True while an inotify descriptor is open in this process."""
        return self._fd >= 0

    def add(self, path: Path, cb: Callable[[], None]) -> _Subscription:
        self._check_fork()
        sub = _Subscription(self, path, cb)
        self._serial.run(lambda: self._add(sub))
        return sub

    def remove(self, sub: _Subscription) -> None:
        self._check_fork()
        self._serial.run(lambda: self._remove(sub))

    def _add(self, sub: _Subscription) -> None:
        self._subs.add(sub)
        if not self._watch(sub):
            self._poll_soon()

    def _remove(self, sub: _Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        if sub.wd is not None:
            users = self._by_wd.get(sub.wd, set())
            users.discard(sub)
            if not users:
                self._by_wd.pop(sub.wd, None)
                if self._fd >= 0 and self._libc is not None:
                    self._libc.inotify_rm_watch(self._fd, sub.wd)
        if not self._by_wd and self._fd >= 0:
            REACTOR.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if not any(s.wd is None for s in self._subs) and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- inotify ------------------------------------------------------------------------
    def _watch(self, sub: _Subscription) -> bool:
        """Cover ``sub`` with an inotify watch on its directory; False if it must be polled."""
        if self._fd < 0:
            if not self._libc_tried:
                self._libc_tried = True
                self._libc = _libc()
            if self._libc is None:
                return False
            # inotify_init1(2): non-blocking, closed on exec.
            fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                self._libc = None  # EMFILE (max_user_instances) and the like: poll
                return False
            self._fd = fd
            REACTOR.add_reader(fd, self._on_events)
        assert self._libc is not None
        wd = self._libc.inotify_add_watch(self._fd, sub.dir, MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOENT, errno.ENOTDIR):
                log.info("cannot watch %s (%s): polling it", sub.dir.decode(errors="replace"),
                         os.strerror(err))
            return False
        sub.wd = wd
        self._by_wd.setdefault(wd, set()).add(sub)
        return True

    def _on_events(self) -> None:
        fire: set[_Subscription] = set()
        with self._serial.held():
            while self._fd >= 0:
                try:
                    data = os.read(self._fd, 65536)
                except OSError:  # EAGAIN: all read
                    break
                off = 0
                while off + _EVENT.size <= len(data):
                    wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                    name = data[off + _EVENT.size: off + _EVENT.size + length].rstrip(b"\0")
                    off += _EVENT.size + length
                    if mask & IN_Q_OVERFLOW:  # events were lost: everyone re-reads
                        fire.update(list(self._subs))
                        continue
                    users = list(self._by_wd.get(wd, ()))
                    if mask & IN_IGNORED:  # the directory went away: poll its files
                        self._by_wd.pop(wd, None)
                        for sub in users:
                            sub.wd = None
                            fire.add(sub)
                        self._poll_soon()
                        continue
                    fire.update(s for s in users if s.name == name)
            for sub in fire:
                sub.last = _signature(sub.path)
        for sub in fire:
            sub.fire()

    # -- the stat loop ------------------------------------------------------------------
    def _poll_soon(self) -> None:
        if self._timer is None:
            self._timer = REACTOR.call_later(POLL_INTERVAL, self._poll)

    def _poll(self) -> None:
        fire = []
        with self._serial.held():
            self._timer = None
            for sub in [s for s in self._subs if s.wd is None]:
                # Try inotify again first (the directory may exist now), then
                # compare: a change made before the watch took hold is not lost.
                self._watch(sub)
                sig = _signature(sub.path)
                if sig != sub.last:
                    sub.last = sig
                    fire.append(sub)
            if any(s.wd is None for s in self._subs):
                self._poll_soon()
        for sub in fire:
            sub.fire()


_HUB = _Hub()


def watch(path: Path, on_change: Callable[[], None]) -> _Subscription:
    """Call ``on_change()`` (from stek's background thread) soon after ``path`` changes."""
    return _HUB.add(path, on_change)
