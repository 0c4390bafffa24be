"""An in-process store: a fake for tests and for single-process embedding."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import NotInitialized
from ..keyring import Keyring
from .base import Mutator


class _Sub:
    def __init__(self, store: MemoryStore, cb: Callable[[], None]) -> None:
        self._store, self._cb = store, cb

    def close(self) -> None:
        with self._store._lock:
            if self._cb in self._store._subs:
                self._store._subs.remove(self._cb)


class MemoryStore:
    """Holds the serialized ring in memory, with the same semantics as real stores."""

    def __init__(self, ring: Keyring | None = None) -> None:
        self.url = "memory:"
        self._data = ring.to_bytes() if ring is not None else None
        self._lock = threading.RLock()
        self._subs: list[Callable[[], None]] = []
        self.writes = 0

    def read(self) -> Keyring:
        with self._lock:
            if self._data is None:
                raise NotInitialized("memory store: no keyring yet")
            return Keyring.from_bytes(self._data, self.url)

    def update(self, mutate: Mutator) -> Keyring:
        with self._lock:
            current = Keyring.from_bytes(self._data, self.url) if self._data is not None else None
            new = mutate(current)
            if new is None or new is current:
                if current is None:
                    raise NotInitialized("memory store: no keyring yet")
                return current
            self._data = new.to_bytes()
            self.writes += 1
            subs = list(self._subs)
        for cb in subs:
            cb()
        return new

    def subscribe(self, on_change: Callable[[], None]) -> _Sub:
        with self._lock:
            self._subs.append(on_change)
        return _Sub(self, on_change)

    def close(self) -> None:
        with self._lock:
            self._subs.clear()
