"""Why stek cannot serve Twisted/daphne (pyOpenSSL) contexts: checked, not assumed.

pyOpenSSL's ``OpenSSL.SSL.Context`` is an ``SSL_CTX`` of the OpenSSL that
cryptography's wheel links statically into ``_rust.abi3.so``.  That library
exports only its ``PyInit_*`` entry points, its cffi binding has no ticket-key
callback, and it is another OpenSSL than the one Python's ``ssl`` uses, so
neither stek's ctypes binding nor the cffi one can install the callback.  If
these tests fail, a cryptography built against the system libssl is installed:
the conclusion in docs/integrations.md must be checked again.
"""

from __future__ import annotations

import ctypes
import ssl

import pytest
from cryptography.hazmat.bindings import _rust
from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

TICKET_FUNCTIONS = ("SSL_CTX_set_tlsext_ticket_key_evp_cb", "SSL_CTX_set_tlsext_ticket_key_cb",
                    "SSL_CTX_callback_ctrl", "SSL_CTX_ctrl", "SSL_CTX_set_session_ticket_cb")


def test_pyopenssl_context_lives_in_cryptographys_own_openssl() -> None:
    lib = Binding().lib
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    assert ctx._context is not None  # an SSL_CTX * of that library
    # Statically linked, symbols hidden: not even SSL_CTX_new is exported.
    with pytest.raises(AttributeError):
        getattr(ctypes.CDLL(_rust.__file__), "SSL_CTX_new")
    print(f"cryptography's OpenSSL {lib.OpenSSL_version_num():#x}, "
          f"Python's ssl {ssl.OPENSSL_VERSION_NUMBER:#x}")


@pytest.mark.parametrize("name", TICKET_FUNCTIONS)
def test_no_ticket_callback_is_reachable(name: str) -> None:
    assert not hasattr(Binding().lib, name)  # not in the cffi binding
    with pytest.raises(AttributeError):  # not exported by the shared object
        getattr(ctypes.CDLL(_rust.__file__), name)
