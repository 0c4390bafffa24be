"""Real nginx: what its own session id contexts refuse, and what stek's scopes add.

One nginx, three server blocks on three ports: A and C serve the same
certificate without client authentication (two tenants that must stay
apart), B has ``ssl_verify_client on``.  Each block includes a stek export,
either the same one (unscoped) or its own scope's (``stek export --scope``).
"""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.certs import TLS_VERSIONS, Certs, client_context
from helpers.ports import free_port
from helpers.web_servers import Hit, get, live_store, nginx_server, nginx_servers
from stek.errors import InvalidTicket
from stek.scope import scoped
from stek.stores.file import FileStore
from stek.ticket import open_ticket

pytestmark = pytest.mark.servers

def export(store: FileStore, out: Path, scope: str | None) -> Path:
    cmd = [sys.executable, "-m", "stek.cli", "export", "--store", f"file:{store.path}",
           "--format", "nginx", "--out", str(out)]
    if scope is not None:
        cmd += ["--scope", scope]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return out / "tickets.conf"


@contextlib.contextmanager
def three_blocks(workdir: Path, certs: Certs, includes: dict[str, Path]) -> Iterator[
        dict[str, int]]:
    """One nginx, blocks A, B and C on a port each (B: ``ssl_verify_client on``)."""
    ports = {label: free_port() for label in "ABC"}
    client_auth = (f"ssl_client_certificate {certs.ca}", "ssl_verify_client on")
    blocks = "".join(nginx_server(port, certs.cert, certs.key, includes[label], label,
                                  client_auth if label == "B" else ())
                     for label, port in ports.items())
    with nginx_servers(workdir / "nginx", blocks, ports["A"]):
        for port in ports.values():
            get_ready(port, certs)
        yield ports


def get_ready(port: int, certs: Certs) -> None:
    cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
    cctx.load_cert_chain(certs.client_cert, certs.client_key)
    assert get(port, cctx).body.startswith(b"HTTP/1.1 200")


def crossings(ports: dict[str, int], certs: Certs, version: ssl.TLSVersion) -> tuple[
        dict[tuple[str, str], bool], dict[str, Hit]]:
    """Offer a ticket from each block to every block; True where nginx resumed it."""
    anonymous = client_context(certs, version)
    with_cert = client_context(certs, version)
    with_cert.load_cert_chain(certs.client_cert, certs.client_key)
    first = {}
    out = {}
    for src in "ABC":
        cctx = with_cert if src == "B" else anonymous
        for dst in "ABC":
            # Python refuses a session from another client context: B's
            # certificate-holding client offers every ticket to B.
            issued = get(ports[src], with_cert if dst == "B" else cctx)
            first[src] = issued
            again = get(ports[dst], with_cert if dst == "B" else cctx, issued.session)
            out[src, dst] = again.reused
            assert again.body.startswith(b"HTTP/1.1 200"), again.body[:60]
    return out, first


@TLS_VERSIONS
def test_nginx_blocks_on_one_export_and_on_scopes(tmp_path: Path, certs: Certs,
                                                  tls_version: ssl.TLSVersion) -> None:
    store, _ = live_store(tmp_path)
    shared = export(store, tmp_path / "shared", None)
    with three_blocks(tmp_path / "one", certs, dict.fromkeys("ABC", shared)) as ports:
        unscoped, issued = crossings(ports, certs, tls_version)
    # nginx alone: B's session id context hashes its client CA names, so
    # nothing crosses into or out of B; A and C (same certificate, no client
    # authentication) resume each other's sessions.
    assert unscoped == {("A", "A"): True, ("A", "B"): False, ("A", "C"): True,
                        ("B", "A"): False, ("B", "B"): True, ("B", "C"): False,
                        ("C", "A"): True, ("C", "B"): False, ("C", "C"): True}
    # ...and every block's keys open every other block's tickets.
    ring = store.read()
    assert open_ticket(issued["A"].ticket, ring).key.name == issued["A"].name

    includes = {label: export(store, tmp_path / f"scope-{label}", label.lower())
                for label in "ABC"}
    with three_blocks(tmp_path / "scoped", certs, includes) as ports:
        scoped_result, issued = crossings(ports, certs, tls_version)
    # With a scope per block nothing crosses, and each block resumes its own.
    assert scoped_result == {(s, d): s == d for s in "ABC" for d in "ABC"}
    # A's ticket is an unknown key to B's and C's keys (a clean full handshake).
    ticket = issued["A"].ticket
    assert open_ticket(ticket, scoped(ring, "a")).key.name == ticket[:16]
    for other in ("b", "c"):
        with pytest.raises(InvalidTicket, match="unknown key"):
            open_ticket(ticket, scoped(ring, other))
