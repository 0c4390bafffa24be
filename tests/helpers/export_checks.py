"""The checks the exporter tests run against each real server an export feeds
(nginx, HAProxy): two instances resume each other's tickets, so do stek's callback
and the server, and ``stek inspect`` explains the server's ticket."""

from __future__ import annotations

import ssl
from pathlib import Path

from helpers.tls_peers import TLSServer, connect
from helpers.web_servers import get, inspect_cli, ticket_of
from stek import Installation
from stek.keyring import Keyring
from stek.schedule import Plan
from stek.session import decode
from stek.stores.file import FileStore
from stek.ticket import open_ticket


def encrypting_name(ring: Keyring, now: float) -> bytes:
    """The name of the key that encrypts new tickets at ``now``."""
    key = ring.encrypting_key(now)
    assert key is not None
    return key.name


def assert_instances_resume_each_other(a: int, b: int, cctx: ssl.SSLContext, ring: Keyring,
                                       now: float) -> None:
    """Two instances of a server on ports ``a`` and ``b`` (answering "a" and "b"), fed one
    export of ``ring``: a's ticket is under the ring's encrypting key at ``now`` and opens
    with the ring (HMAC verified, AES-CBC decrypted); it resumes on b, and b's on a."""
    first = get(a, cctx)
    assert not first.reused and first.body.rstrip().endswith(b"a")
    assert first.name == encrypting_name(ring, now)
    assert open_ticket(first.ticket, ring).key.name == first.name
    on_b = get(b, cctx, first.session)
    assert on_b.reused and on_b.body.rstrip().endswith(b"b")
    assert get(a, cctx, on_b.session).reused


def assert_inspect_explains(sess: Path, store: FileStore, name: bytes,
                            tls_version: ssl.TLSVersion) -> None:
    """``stek inspect`` on ``sess`` (s_client's -sess_out file, a ticket under the key
    ``name``): a resume under that active key while the ring holds it, then, once it
    is dropped from the ring, a full handshake for an unknown key."""
    code, doc = inspect_cli(sess, store)
    assert code == 0, doc
    assert doc["verdict"] == "resume" and doc["key_name"] == name.hex()
    assert doc["key"]["state"] == "active" and doc["input_form"] == "session PEM"
    assert doc["session"]["protocol"] == ("TLSv1.3" if tls_version == ssl.TLSVersion.TLSv1_3
                                          else "TLSv1.2")
    store.update(lambda r: r.apply(Plan(drop=(name,))))
    code, doc = inspect_cli(sess, store)
    assert code == 1, doc
    assert doc["verdict"] == "full handshake" and doc["reason"].startswith("unknown key")
    assert doc["key_name"] == name.hex() and doc["key"] is None


def assert_resumes_both_ways(port: int, py: TLSServer, handle: Installation,
                             cctx: ssl.SSLContext, ring: Keyring, now: float, size: int,
                             sid: bytes) -> None:
    """The server on ``port`` (fed an export of ``ring``) and ``py`` (stek's callback on
    the ring, ``handle``) resume each other's tickets.

    The server's ticket is under the ring's encrypting key at ``now``, opens with the
    ring (a ``size``-byte key: name, HMAC and AES in the right order) and carries the
    session id context ``sid``; stek's ticket, under the same key, resumes on the server.
    """
    name = encrypting_name(ring, now)
    from_server = get(port, cctx)
    assert from_server.name == name
    opened = open_ticket(from_server.ticket, ring)
    assert opened.key.size == size
    assert decode(opened.state).sid_ctx == sid
    assert connect(py.port, cctx, from_server.session).reused, \
        "stek's callback must open the server's ticket"
    assert handle.counters.resumed >= 1
    from_stek = connect(py.port, cctx)
    assert ticket_of(from_stek.session)[:16] == name
    assert get(port, cctx, from_stek.session).reused, "the server must open stek's ticket"
    assert not py.errors
