"""``stek status``: the revoked names a ring remembers, in its document and its text."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stek.cli import main as cli_main
from stek.cli.core import iso, status_doc
from stek.keyring import Keyring
from stek.rotation import init_ring, revoke, rotate
from stek.schedule import Policy
from stek.stores import FileStore, MemoryStore

POLICY = Policy(rotate_every=3600, accept_for=7200, publish_ahead=600)
T = 1_900_000_000


def revoked_ring() -> tuple[Keyring, bytes, int]:
    """A ring at T + 10 whose first key was revoked: (ring, its name, its expiry)."""
    store = MemoryStore()
    init_ring(store, POLICY, now=T)
    rotate(store, now=T + POLICY.rotate_every - 60)  # the next key is published
    gone = store.read().keys[0]
    revoke(store, [gone.name], now=T + 10)
    return store.read(), gone.name, gone.expires_at


def test_status_doc_lists_revoked_names_and_when_they_are_forgotten() -> None:
    ring, name, expires_at = revoked_ring()
    doc = status_doc(ring, "memory:", T + 20)
    assert doc["revoked"] == [{"name": name.hex(), "expires_at": iso(expires_at)}]
    assert name.hex() not in {k["name"] for k in doc["keys"]}
    text = json.dumps(doc)
    for k in ring.keys:
        assert k.aes_key.hex() not in text and k.hmac_key.hex() not in text


def test_status_doc_keeps_its_other_fields() -> None:
    ring, _, _ = revoked_ring()
    assert set(status_doc(ring, "memory:", T + 20)) == {
        "store", "generation", "now", "policy", "next_change", "keys", "revoked"}


def test_status_doc_without_revocations_lists_none() -> None:
    store = MemoryStore()
    ring = init_ring(store, POLICY, now=T).ring
    assert status_doc(ring, "memory:", T + 20)["revoked"] == []


def test_status_doc_leaves_out_names_whose_time_has_passed() -> None:
    """As Keyring.without forgets them: an entry is remembered while its instant is ahead."""
    ring, name, expires_at = revoked_ring()
    other = bytes(range(16))
    ring = Keyring(ring.policy, ring.keys, ring.generation,
                   ((name, expires_at), (other, expires_at + 3600)))
    assert [r["name"] for r in status_doc(ring, "memory:", expires_at - 1)["revoked"]] \
        == sorted([name.hex(), other.hex()])
    assert status_doc(ring, "memory:", expires_at)["revoked"] \
        == [{"name": other.hex(), "expires_at": iso(expires_at + 3600)}]
    assert status_doc(ring, "memory:", expires_at + 3600)["revoked"] == []


def status_text(capsys: pytest.CaptureFixture[str], path: Path) -> list[str]:
    capsys.readouterr()
    assert cli_main(["status", "--store", f"file:{path}"]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_text_lists_revoked_names_after_the_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, POLICY)
    assert not any(line.lstrip().startswith("revoked") for line in status_text(capsys, store.path))
    gone = store.read().keys[0]
    revoke(store, [gone.name])
    lines = status_text(capsys, store.path)
    header = lines.index(f"  {'revoked':32}  expires")
    assert lines[header + 1] == f"  {gone.name.hex()}  {iso(gone.expires_at)}"
    assert lines.index(next(ln for ln in lines if ln.lstrip().startswith("name"))) < header
    assert lines[-2].lstrip().startswith(store.read().keys[-1].name.hex()[:8] + " ["), \
        "the timeline still ends the output"


def test_status_text_leaves_out_names_whose_time_has_passed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, POLICY)
    gone = store.read().keys[0]
    revoke(store, [gone.name])
    past = int(time.time()) - 1

    def backdate(ring: Keyring | None) -> Keyring:
        assert ring is not None
        return Keyring(ring.policy, ring.keys, ring.generation + 1, ((gone.name, past),))

    store.update(backdate)
    assert store.read().revoked == ((gone.name, past),), "the stored ring still names it"
    lines = status_text(capsys, store.path)
    assert gone.name.hex() not in "\n".join(lines)
    assert not any(line.lstrip().startswith("revoked") for line in lines)
