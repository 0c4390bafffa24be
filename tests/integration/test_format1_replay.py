"""A format-1 sealed value put back in a real store is never laundered into format 2.

Format 1 binds neither the ring nor the generation (stores/sealing.py), so a
writer without the KEK who kept an old format-1 value (a backup, a snapshot)
can put it back.  Readers refuse it; ``stek rekey`` must not turn it into a
format-2 value that fresh readers load (old keys, old policy).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from helpers.store_servers import RedisServer
from stek import Policy, SealingError, init_ring, open_store
from stek.cli import main as cli_main
from stek.keyring import Keyring
from stek.rotation import rotate
from stek.stores.memory import MemoryStore
from stek.stores.sealing import SharedStore, kek_id, read_kek_file

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

POLICY = Policy(rotate_every=3600, accept_for=3 * 3600, publish_ahead=600)
DAY = 86400


def ring_as_of(now: float) -> Keyring:
    """The ring an agent rotating every hour held at ``now`` (three keys)."""
    mem = MemoryStore()
    init_ring(mem, POLICY, now=now - 2 * 3600)
    for hours in (1, 2):
        rotate(mem, now=now - 2 * 3600 + hours * 3600)
    return mem.read()


def format_1(kek: bytes, ring: Keyring) -> bytes:
    """A value as stek sealed it in format 1: header, nonce, AES-GCM with the header as AAD."""
    header = b"STEKSEAL\x01" + bytes.fromhex(kek_id(kek))
    nonce = os.urandom(12)
    return header + nonce + AESGCM(kek).encrypt(nonce, ring.to_bytes(), header)


def shared(url: str, kek_file: Path) -> SharedStore[object]:
    store = open_store(url, kek_file=str(kek_file))
    assert isinstance(store, SharedStore)
    return store


def put_raw(server: RedisServer, value: bytes) -> None:
    """What a writer without the KEK can do: set the ring's key to any bytes."""
    c = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        c.set("stektest:keyring", value)
    finally:
        c.close()


def rekey(server: RedisServer, kek_file: Path, *extra: str) -> int:
    return cli_main(["rekey", "--store", server.url, "--kek-file", str(kek_file),
                     "--new-kek-file", str(kek_file), *extra])


def test_replayed_format_1_value_is_not_laundered_by_rekey(
        redis_server: RedisServer, kek_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kek = read_kek_file(kek_file)[0]
    current = shared(redis_server.url, kek_file)
    init_ring(current, POLICY)
    rotate(current)
    old = format_1(kek, ring_as_of(time.time() - 3 * DAY))  # kept since the days of format 1
    put_raw(redis_server, old)

    with pytest.raises(SealingError) as info:
        shared(redis_server.url, kek_file).read()
    assert "format 1" in str(info.value)
    assert "rekey" not in str(info.value)  # the advice that laundered it

    # Plain rekey refuses it, and leaves it as it is.
    assert rekey(redis_server, kek_file) == 1
    err = capsys.readouterr().err
    assert err.startswith("stek: error: ") and err.count("\n") == 1 and "format 1" in err
    assert redis_server.raw_values()[b"stektest:keyring"] == old
    # So does --format-1: no key of the ring activated within rotate_every.
    assert rekey(redis_server, kek_file, "--format-1") == 1
    err = capsys.readouterr().err
    assert "stale" in err and err.count("\n") == 1
    assert redis_server.raw_values()[b"stektest:keyring"] == old
    with pytest.raises(SealingError, match="format 1"):
        shared(redis_server.url, kek_file).read()


def test_current_format_1_ring_is_resealed_with_every_key_shown(
        redis_server: RedisServer, kek_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An upgrade from a stek that sealed format 1: the ring an agent kept is re-sealed."""
    kek = read_kek_file(kek_file)[0]
    ring = ring_as_of(time.time())
    put_raw(redis_server, format_1(kek, ring))
    assert rekey(redis_server, kek_file, "--format-1") == 0
    out = capsys.readouterr().out
    for key in ring.keys:
        assert f"key {key.name.hex()} activates " in out
    loaded = shared(redis_server.url, kek_file).read()
    assert loaded.keys == ring.keys
    assert loaded.generation > ring.generation
    assert redis_server.raw_values()[b"stektest:keyring"][8] == 2
