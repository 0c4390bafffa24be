"""A ring file the inspect CLI reads."""

from __future__ import annotations

from pathlib import Path

from helpers.tickets import (
    ring_of,
    write_ring,
)
from stek.keys import TicketKey
from stek.stores.file import FileStore


def cli_store(d: Path, *keys: TicketKey) -> str:
    store = FileStore(str(d / "ring-under-test.json"))
    write_ring(store, ring_of(*keys))
    return f"file:{store.path}"
