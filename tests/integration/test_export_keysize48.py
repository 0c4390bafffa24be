"""48-byte rings (AES-128, 16-byte HMAC keys): created, warned about, honoured by the callback."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.tls_peers import TLSServer, connect
from helpers.web_servers import ticket_of
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import FileStore
from stek.ticket import open_ticket

T0 = 1_900_000_201


def test_policy_warns_that_48_byte_keys_cap_security() -> None:
    assert any("128 bits" in w for w in Policy(key_size=48).warnings)
    assert not any("128 bits" in w for w in Policy().warnings)


def test_stek_init_key_size_48_warns(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "stek.cli", "init", "--key-size", "48",
                        "--store", f"file:{tmp_path / 'ring.json'}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "128 bits" in r.stderr
    ring = FileStore(tmp_path / "ring.json").read()
    assert ring.policy.key_size == 48 and all(k.size == 48 for k in ring)


@TLS_VERSIONS
def test_48_byte_ring_resumes_through_install(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """Two servers on one 48-byte ring: tickets are AES-128 sealed and resume across them."""
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy(rotate_every=600, accept_for=3000, key_size=48), now=T0)
    ring = store.read()
    contexts = [server_context(certs), server_context(certs)]
    handles = [stek.install(c, store, clock=lambda: T0) for c in contexts]
    cctx = client_context(certs, tls_version)
    with TLSServer(contexts[0]) as a, TLSServer(contexts[1]) as b:
        first = connect(a.port, cctx)
        ticket = ticket_of(first.session)
        opened = open_ticket(ticket, ring)  # AES-128-CBC + HMAC-SHA256 with 16-byte keys
        assert opened.key.size == 48 and len(opened.key.aes_key) == 16
        again = connect(b.port, cctx, first.session)
        assert again.reused and again.version == first.version
        assert handles[0].counters.issued >= 1
        assert handles[1].counters.resumed == 1
        assert not a.errors and not b.errors
    for h in handles:
        h.uninstall()
