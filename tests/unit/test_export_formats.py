"""Exporters without servers: known-answer layouts, key order, file rules, the CLI."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from helpers.export_keys import key, parts
from stek.export import ExportError, export, render, serving_order
from stek.keyring import Keyring
from stek.keys import TicketKey
from stek.schedule import Policy

NOW = 10_000


def ring_of(*keys: TicketKey, size: int = 80) -> Keyring:
    return Keyring(Policy(rotate_every=1000, accept_for=5000, publish_ahead=100,
                          key_size=size), keys)


def full_ring(size: int = 80) -> Keyring:
    """Expired, two decrypt-only, active, pending: every state."""
    return ring_of(
        key(1, size, 1000, 2000, 3000),          # expired
        key(2, size, 6000, 7000, 10200),         # decrypt-only (older)
        key(3, size, 9000, 9500, 14500),         # decrypt-only (newer)
        key(4, size, 9500, 10050, 15050),        # active
        key(5, size, 10050, 11000, 16000),       # pending
        size=size,
    )


def test_serving_order_active_then_pending_then_newest_decrypting() -> None:
    order = serving_order(full_ring(), NOW)
    assert [k.name[0] - 0xB0 for k in order.keys] == [4, 5, 3, 2]


def test_no_active_key_is_refused() -> None:
    ring = ring_of(key(2, 80, 6000, 7000, 12000))
    with pytest.raises(ExportError, match="no active key"):
        render("nginx", ring, NOW, "/x")


@pytest.mark.parametrize("size", [80, 48])
def test_nginx_layout_and_order(tmp_path: Path, size: int) -> None:
    r = render("nginx", full_ring(size), NOW, tmp_path)
    files = dict(r.files)
    for tag in (4, 5, 3, 2):
        name, aes, hmac = parts(tag, size)
        data = files[f"{name.hex()}.key"]
        # ngx_ssl_session_ticket_keys: 80 = name|HMAC|AES, 48 = name|AES|HMAC.
        assert data == (name + hmac + aes if size == 80 else name + aes + hmac)
    conf = files["tickets.conf"].decode()
    lines = [ln for ln in conf.splitlines() if ln.startswith("ssl_session_ticket_key")]
    expected = [parts(t)[0].hex() for t in (4, 5, 3, 2)]
    assert lines == [f'ssl_session_ticket_key "{tmp_path}/{n}.key";' for n in expected]
    assert r.files[-1][0] == "tickets.conf"  # written after the keys it names


@pytest.mark.parametrize("size", [80, 48])
def test_haproxy_layout_three_lines(size: int) -> None:
    data = render("haproxy", full_ring(size), NOW, "/x").content.decode()
    lines = data.splitlines()
    assert len(lines) == 3
    decoded = [base64.b64decode(ln) for ln in lines]
    # struct tls_sess_key_*: name|AES|HMAC; previous, encrypting (penultimate), next (last).
    assert decoded == [b"".join(parts(t, size)) for t in (3, 4, 5)]


@pytest.mark.parametrize(("tags", "expected"), [
    ((4,), (4, 4, 4)),
    ((3, 4), (3, 4, 4)),
    ((4, 5), (4, 4, 5)),
    ((2, 3, 4, 5), (3, 4, 5)),
])
def test_haproxy_pads_missing_slots_with_the_encrypting_key(
        tags: tuple[int, ...], expected: tuple[int, ...]) -> None:
    all_keys = {k.name[0] - 0xB0: k for k in full_ring().keys}
    ring = ring_of(*(all_keys[t] for t in tags))
    lines = render("haproxy", ring, NOW, "/x").content.decode().split()
    assert [base64.b64decode(ln)[0] - 0xB0 for ln in lines] == list(expected)


def test_apache_48_byte_layout_and_80_byte_refusal() -> None:
    data = render("apache", full_ring(48), NOW, "/x").content
    name, aes, hmac = parts(4, 48)
    # mod_ssl ssl_init_ticket_key: name|HMAC|AES, 16 bytes each.
    assert data == name + hmac + aes
    with pytest.raises(ExportError) as err:
        render("apache", full_ring(80), NOW, "/x")
    msg = str(err.value)
    assert "48-byte" in msg and "--key-size 48" in msg


def test_envoy_layout_order_and_48_byte_refusal(tmp_path: Path) -> None:
    r = render("envoy", full_ring(), NOW, tmp_path)
    files = dict(r.files)
    name, aes, hmac = parts(4)
    assert files[f"{name.hex()}.key"] == name + hmac + aes
    yaml = files["session_ticket_keys.yaml"].decode()
    order = [ln.split('"')[1] for ln in yaml.splitlines() if "filename" in ln]
    assert order == [f"{tmp_path}/{parts(t)[0].hex()}.key" for t in (4, 5, 3, 2)]
    with pytest.raises(ExportError, match="80 bytes"):
        render("envoy", full_ring(48), NOW, tmp_path)


@pytest.mark.parametrize("size", [80, 48])
def test_openssl_raw_records(size: int) -> None:
    data = render("openssl", full_ring(size), NOW, "/x").content
    name, aes, hmac = parts(4, size)
    assert data[:size] == name + hmac + aes
    assert len(data) == 4 * size


def test_files_are_0600_atomic_and_written_only_on_change(tmp_path: Path) -> None:
    out = tmp_path / "nginx"
    first = export("nginx", full_ring(), NOW, out)
    assert first.changed and len(first.written) == 5
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    again = export("nginx", full_ring(), NOW, out)
    assert not again.changed and len(again.unchanged) == 5
    assert before == {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    assert not [p for p in out.iterdir() if "tmp" in p.name]


def test_a_wrong_mode_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.keys"
    export("haproxy", full_ring(), NOW, path)
    os.chmod(path, 0o644)
    assert export("haproxy", full_ring(), NOW, path).changed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_stale_key_files_removed_foreign_files_kept(tmp_path: Path) -> None:
    out = tmp_path / "nginx"
    export("nginx", full_ring(), NOW, out)
    (out / "README").write_text("mine")
    later = NOW + 500  # key 2 expired, key 4 decrypt-only, key 5 active
    result = export("nginx", full_ring(), later, out)
    assert [p.name for p in result.removed] == [f"{parts(2)[0].hex()}.key"]
    assert (out / "README").read_text() == "mine"
    conf = (out / "tickets.conf").read_text()
    assert conf.index(parts(5)[0].hex()) < conf.index(parts(4)[0].hex())


def test_errors_and_reprs_carry_no_key_bytes(tmp_path: Path) -> None:
    ring = full_ring(80)
    secrets = [p.hex() for k in ring.keys for p in (k.aes_key, k.hmac_key)]
    (tmp_path / "blocker").write_text("")
    with pytest.raises(ExportError) as err:
        export("haproxy", ring, NOW, tmp_path / "blocker" / "keys")
    with pytest.raises(ExportError) as err2:
        render("apache", ring, NOW, "/x")
    for text in (str(err.value), str(err2.value), repr(ring), repr(ring.keys[0])):
        assert not any(s in text for s in secrets)
