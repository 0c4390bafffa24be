"""OpenSSL and Envoy layouts, proven with OpenSSL's own ticket-key control.

``SSL_CTX_set_tlsext_ticket_keys()`` (``SSL_CTRL_SET_TLSEXT_TICKET_KEYS``)
takes 80 bytes name|HMAC|AES, the layout of the ``openssl`` export and of
each Envoy key file.  A Python server fed the exported bytes through that
control (OpenSSL's built-in ticket code, no stek callback) and a server
running stek's callback on the ring must resume each other's tickets.
"""

from __future__ import annotations

import ctypes
import ssl
from pathlib import Path

import pytest

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.tls_peers import TLSServer, connect
from helpers.web_servers import ticket_of
from stek.compat import PYTHON_SESSION_ID_CONTEXT
from stek.export import export
from stek.hazmat.libssl import libssl
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import FileStore

#: openssl/ssl.h
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
T0 = 1_900_000_201


def openssl_keyed_context(certs: Certs, key80: bytes) -> ssl.SSLContext:
    """A server whose ticket key is set by OpenSSL's control, not by a callback."""
    assert len(key80) == 80
    ctx = server_context(certs)
    lib = libssl()
    ctrl = lib.lib.SSL_CTX_ctrl
    ctrl.restype = ctypes.c_long
    ctrl.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p)
    assert ctrl(lib.ssl_ctx_pointer(ctx), SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80, key80) == 1
    return ctx


@pytest.mark.parametrize("fmt", ["openssl", "envoy"])
@TLS_VERSIONS
def test_exported_key_drives_openssl_builtin_tickets(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion, fmt: str) -> None:
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy(rotate_every=600, accept_for=3000, publish_ahead=60), now=T0)
    ring = store.read()
    enc = ring.encrypting_key(T0)
    assert enc is not None
    out = tmp_path / fmt
    export(fmt, ring, T0, out)
    key80 = (out.read_bytes() if fmt == "openssl"
             else (out / f"{enc.name.hex()}.key").read_bytes())[:80]
    plain = openssl_keyed_context(certs, key80)
    with_stek = server_context(certs)
    # A stek server joins servers keyed by OpenSSL's control (Python's own
    # session id context) by taking their context (docs/integrations.md).
    handle = stek.install(with_stek, store, clock=lambda: T0,
                          session_id_context=PYTHON_SESSION_ID_CONTEXT)
    cctx = client_context(certs, tls_version)
    with TLSServer(plain) as a, TLSServer(with_stek) as b:
        first = connect(a.port, cctx)
        assert ticket_of(first.session)[:16] == enc.name
        assert connect(b.port, cctx, first.session).reused
        from_stek = connect(b.port, cctx)
        assert connect(a.port, cctx, from_stek.session).reused
        assert handle.counters.resumed >= 1 and handle.counters.issued >= 1
    handle.uninstall()
