"""ctypes binding to the very libssl that Python's ``_ssl`` module links.

HAZMAT.  This module reads a pointer out of CPython's private ``_ssl``
objects and hands Python callables to C.  It is kept small, and everything
that can be checked is checked before anything is written:

* symbols are resolved through ``dlopen(_ssl.__file__)``, whose dependency
  chain is exactly the libssl/libcrypto Python uses; a statically linked
  Python exports none of them and gets :class:`~stek.errors.BindingError`;
* the library version must equal ``ssl.OPENSSL_VERSION_NUMBER``;
* the ``SSL_CTX *`` read from the ``SSLContext`` object must answer
  ``SSL_CTX_get_options`` exactly as ``SSLContext.options`` does.

Layouts relied on (CPython ``Modules/_ssl.c``):
``PySSLContext { PyObject_HEAD; SSL_CTX *ctx; ... }`` and
``PySSLSession { PyObject_HEAD; SSL_SESSION *session; ... }``: the C pointer
is the first field after the object header.  No pointer read that way reaches
libssl before stek.hazmat.proof has checked, on this interpreter, that the
word there is the very pointer OpenSSL made (once per process).
"""

from __future__ import annotations

import ctypes
import ssl
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint,
    c_uint64,
    c_ulong,
    c_void_p,
)
from dataclasses import dataclass
from typing import Any

from ..errors import BindingError
from ..ticket_appdata import BIRTH_LEN, decode_birth, encode_birth

# PreparedKey (and the OSSL_PARAM it is built of) lives in stek.hazmat.prepared_key;
# these names stay importable from here.
from .prepared_key import OSSL_PARAM as OSSL_PARAM
from .prepared_key import OSSL_PARAM_OCTET_STRING as OSSL_PARAM_OCTET_STRING
from .prepared_key import OSSL_PARAM_UTF8_STRING as OSSL_PARAM_UTF8_STRING
from .prepared_key import PreparedKey

#: openssl/evp.h: EVP_MAX_IV_LENGTH; the ``iv`` buffer handed to the callback.
EVP_MAX_IV_LENGTH = 16
#: openssl/tls1.h: key_name is 16 bytes (RFC 5077 section 4).
TICKET_NAME_LEN = 16
#: openssl/ssl.h: SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, used by the 1.1.1 macro
#: SSL_CTX_set_tlsext_ticket_key_cb() through SSL_CTX_callback_ctrl().
SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
#: openssl/prov_ssl.h: TLS1_3_VERSION.
TLS1_3_VERSION = 0x0304
#: int (*)(SSL *s, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
#:         EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx / HMAC_CTX *hctx, int enc)
#: SSL_CTX_set_tlsext_ticket_key_evp_cb(3) (OpenSSL 3) and the 1.1.1 HMAC form.
TicketKeyCallback = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_int)


#: int (*)(SSL *s, void *arg): SSL_CTX_set_session_ticket_cb(3) gen_cb, called
#: before a ticket is sealed.
GenTicketCallback = CFUNCTYPE(c_int, c_void_p, c_void_p)
#: SSL_TICKET_RETURN (*)(SSL *s, SSL_SESSION *ss, const unsigned char *keyname,
#: size_t keyname_length, SSL_TICKET_STATUS status, void *arg): dec_cb, called
#: after a presented ticket was processed.
DecTicketCallback = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p, c_size_t, c_int, c_void_p)
#: int (*)(SSL *s, int *al, void *arg): SSL_CTX_set_client_hello_cb(3).
ClientHelloCallback = CFUNCTYPE(c_int, c_void_p, c_void_p, c_void_p)
#: void (*)(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
#: void *argp): CRYPTO_EX_free, CRYPTO_get_ex_new_index(3).
ExFreeCallback = CFUNCTYPE(None, c_void_p, c_void_p, c_void_p, c_int, c_long, c_void_p)
#: openssl/crypto.h: CRYPTO_EX_INDEX_SSL_CTX.
CRYPTO_EX_INDEX_SSL_CTX = 1
#: openssl/ssl.h: SSL_MAX_SID_CTX_LENGTH.
SSL_MAX_SID_CTX_LENGTH = 32
#: openssl/ssl.h: SSL_CLIENT_HELLO_SUCCESS.
SSL_CLIENT_HELLO_SUCCESS = 1
#: openssl/ssl.h: SSL_VERIFY_FAIL_IF_NO_PEER_CERT (set by Python's CERT_REQUIRED).
SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
#: openssl/ssl.h: SSL_CTRL_GET_CHAIN_CERTS, the ctrl behind SSL_CTX_get0_chain_certs().
SSL_CTRL_GET_CHAIN_CERTS = 82


@dataclass(frozen=True)
class CPythonSSL:
    """How one CPython version's ``Modules/_ssl.c`` sets its session id context."""

    #: The session id context ``_ssl`` gives server connections: ``"Python"``
    #: with its NUL (``sizeof(SID_CTX)``), 7 bytes.
    session_id_context: bytes
    #: Where ``_ssl`` sets it: on the SSL_CTX when the context is made
    #: (``SSL_CTX_set_session_id_context``, up to 3.12), or on each server SSL
    #: when a socket is wrapped (``SSL_set_session_id_context`` in
    #: ``newPySSLSocket``, 3.13: gh-105293).  Either way it is set before the
    #: handshake, so stek's ClientHello callback, which runs later, wins.
    applied_to: str


#: What the binding proof (stek.hazmat.proof) finds on the CPython versions CI
#: runs; a version missing here is proven the same way, not refused.
CPYTHON_SSL: dict[tuple[int, int], CPythonSSL] = {
    (3, 10): CPythonSSL(b"Python\x00", "SSL_CTX"),
    (3, 11): CPythonSSL(b"Python\x00", "SSL_CTX"),
    (3, 12): CPythonSSL(b"Python\x00", "SSL_CTX"),
    (3, 13): CPythonSSL(b"Python\x00", "SSL"),
}


def cpython_ssl() -> CPythonSSL:
    """This interpreter's :class:`CPythonSSL`, as the binding proof observed it."""
    from .proof import binding

    proven = binding(libssl())
    return CPythonSSL(proven.python_session_id_context, proven.applied_to)


def _load() -> ctypes.CDLL:
    import _ssl

    path = getattr(_ssl, "__file__", None)
    if not path:
        raise BindingError(
            "this Python's ssl module is built in (statically linked): stek cannot reach "
            "its libssl"
        )
    try:
        lib = ctypes.CDLL(path)
        _ = lib.SSL_CTX_callback_ctrl, lib.EVP_EncryptInit_ex, lib.RAND_bytes
    except (OSError, AttributeError) as exc:
        raise BindingError(
            f"cannot reach the libssl that {path} links ({exc}); a statically linked "
            f"OpenSSL is not supported"
        ) from None
    return lib


class LibSSL:
    """The functions stek needs, typed once."""

    def __init__(self) -> None:
        lib = _load()
        self.lib = lib
        lib.OpenSSL_version_num.restype = c_ulong
        lib.OpenSSL_version_num.argtypes = ()
        version = int(lib.OpenSSL_version_num())
        if version != ssl.OPENSSL_VERSION_NUMBER:
            raise BindingError(
                f"libssl reached by ctypes is {version:#x}, but Python's ssl reports "
                f"{ssl.OPENSSL_VERSION_NUMBER:#x}: refusing to mix two OpenSSLs"
            )
        self.version = version
        self.openssl3 = version >= 0x30000000

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            # lib[name] is a function object of stek's own: ``lib.name`` is
            # shared by everything in the process that uses this CDLL, and
            # whoever sets its argtypes there would change stek's prototype.
            f = lib[name]
            f.restype = restype
            f.argtypes = argtypes
            return f

        self.SSL_CTX_get_options = fn("SSL_CTX_get_options", c_uint64, c_void_p)
        self.SSL_CTX_set_timeout = fn("SSL_CTX_set_timeout", c_long, c_void_p, c_long)
        self.SSL_CTX_get_timeout = fn("SSL_CTX_get_timeout", c_long, c_void_p)
        self.SSL_CTX_callback_ctrl = fn(
            "SSL_CTX_callback_ctrl", c_long, c_void_p, c_int, c_void_p
        )
        self.SSL_version = fn("SSL_version", c_int, c_void_p)
        self.SSL_get_SSL_CTX = fn("SSL_get_SSL_CTX", c_void_p, c_void_p)
        self.RAND_bytes = fn("RAND_bytes", c_int, c_void_p, c_int)
        self.EVP_EncryptInit_ex = fn(
            "EVP_EncryptInit_ex", c_int, c_void_p, c_void_p, c_void_p, c_char_p, c_void_p
        )
        self.EVP_DecryptInit_ex = fn(
            "EVP_DecryptInit_ex", c_int, c_void_p, c_void_p, c_void_p, c_char_p, c_void_p
        )
        if self.openssl3:
            # Fetch the ciphers once: a legacy EVP_aes_*_cbc() pointer makes
            # every EVP_*Init_ex call fetch again (OpenSSL 3 "implicit fetch").
            fetch = fn("EVP_CIPHER_fetch", c_void_p, c_void_p, c_char_p, c_char_p)
            self.aes_256_cbc = fetch(None, b"AES-256-CBC", None)
            self.aes_128_cbc = fetch(None, b"AES-128-CBC", None)
        else:
            self.aes_256_cbc = fn("EVP_aes_256_cbc", c_void_p)()
            self.aes_128_cbc = fn("EVP_aes_128_cbc", c_void_p)()
        if not self.aes_256_cbc or not self.aes_128_cbc:
            raise BindingError("libssl has no AES-CBC cipher (FIPS or trimmed build?)")
        self.sha256 = fn("EVP_sha256", c_void_p)()
        self.SSL_SESSION_get0_ticket = fn(
            "SSL_SESSION_get0_ticket", None, c_void_p, POINTER(c_void_p), POINTER(c_size_t)
        )
        self.SSL_SESSION_get_time = fn("SSL_SESSION_get_time", c_long, c_void_p)
        self.SSL_SESSION_get_timeout = fn("SSL_SESSION_get_timeout", c_long, c_void_p)
        self.i2d_SSL_SESSION = fn("i2d_SSL_SESSION", c_int, c_void_p, POINTER(c_void_p))
        # Ticket appdata and the session ticket callbacks (OpenSSL 1.1.1+).
        self.SSL_get_session = fn("SSL_get_session", c_void_p, c_void_p)
        self.SSL_SESSION_set1_ticket_appdata = fn(
            "SSL_SESSION_set1_ticket_appdata", c_int, c_void_p, c_char_p, c_size_t
        )
        self.SSL_SESSION_get0_ticket_appdata = fn(
            "SSL_SESSION_get0_ticket_appdata", c_int, c_void_p, POINTER(c_void_p),
            POINTER(c_size_t)
        )
        self.SSL_CTX_set_session_ticket_cb = fn(
            "SSL_CTX_set_session_ticket_cb", c_int, c_void_p, c_void_p, c_void_p, c_void_p
        )
        # Session id contexts (SSL_CTX_set_session_id_context(3)), the
        # ClientHello callback that sets one per connection, and SSL_CTX
        # ex_data (CRYPTO_get_ex_new_index(3)) to learn when OpenSSL frees it.
        self.SSL_set_session_id_context = fn(
            "SSL_set_session_id_context", c_int, c_void_p, c_char_p, c_uint
        )
        self.SSL_SESSION_get0_id_context = fn(
            "SSL_SESSION_get0_id_context", c_void_p, c_void_p, POINTER(c_uint)
        )
        self.SSL_CTX_set_session_id_context = fn(
            "SSL_CTX_set_session_id_context", c_int, c_void_p, c_char_p, c_uint
        )
        # The last check on a presented ticket (SSL_get_verify_mode(3),
        # SSL_SESSION_get0_peer(3)) and the server chain that a context's
        # trust configuration is hashed from (SSL_CTX_get0_certificate(3)).
        self.SSL_get_verify_mode = fn("SSL_get_verify_mode", c_int, c_void_p)
        self.SSL_SESSION_get0_peer = fn("SSL_SESSION_get0_peer", c_void_p, c_void_p)
        self.SSL_client_hello_get0_ext = fn(
            "SSL_client_hello_get0_ext", c_int, c_void_p, c_uint, POINTER(c_void_p),
            POINTER(c_size_t)
        )
        self.SSL_SESSION_get0_hostname = fn("SSL_SESSION_get0_hostname", c_void_p, c_void_p)
        self.SSL_get_servername = fn("SSL_get_servername", c_void_p, c_void_p, c_int)
        self.SSL_SESSION_set1_hostname = fn("SSL_SESSION_set1_hostname", c_int, c_void_p,
                                            c_char_p)
        self.SSL_CTX_get0_certificate = fn("SSL_CTX_get0_certificate", c_void_p, c_void_p)
        self.SSL_CTX_ctrl = fn("SSL_CTX_ctrl", c_long, c_void_p, c_int, c_long, c_void_p)
        self.i2d_X509 = fn("i2d_X509", c_int, c_void_p, POINTER(c_void_p))
        self.OPENSSL_sk_num = fn("OPENSSL_sk_num", c_int, c_void_p)
        self.OPENSSL_sk_value = fn("OPENSSL_sk_value", c_void_p, c_void_p, c_int)
        self.SSL_CTX_set_client_hello_cb = fn(
            "SSL_CTX_set_client_hello_cb", None, c_void_p, c_void_p, c_void_p
        )
        self.CRYPTO_get_ex_new_index = fn(
            "CRYPTO_get_ex_new_index", c_int, c_int, c_long, c_void_p, c_void_p, c_void_p,
            c_void_p
        )
        self.SSL_CTX_set_ex_data = fn("SSL_CTX_set_ex_data", c_int, c_void_p, c_int, c_void_p)
        self.SSL_CTX_get_ex_data = fn("SSL_CTX_get_ex_data", c_void_p, c_void_p, c_int)
        if self.openssl3:
            self.SSL_CTX_set_tlsext_ticket_key_evp_cb = fn(
                "SSL_CTX_set_tlsext_ticket_key_evp_cb", c_int, c_void_p, TicketKeyCallback
            )
            self.EVP_MAC_CTX_set_params = fn(
                "EVP_MAC_CTX_set_params", c_int, c_void_p, c_void_p
            )
        else:  # OpenSSL 1.1.1: HMAC_CTX variant
            self.HMAC_Init_ex = fn(
                "HMAC_Init_ex", c_int, c_void_p, c_char_p, c_int, c_void_p, c_void_p
            )

    def address(self, name: str) -> int:
        """The C address of a libssl/libcrypto function (for the C accelerator)."""
        return int(ctypes.cast(getattr(self.lib, name), c_void_p).value or 0)

    # -- pointers out of CPython objects -------------------------------------------
    def ssl_ctx_pointer(self, context: ssl.SSLContext) -> int:
        """The ``SSL_CTX *`` behind ``context``, at the offset the binding proof
        (stek.hazmat.proof) validated in this process, then checked against its
        options."""
        from .proof import binding, read_word

        if not isinstance(context, ssl.SSLContext):
            raise BindingError(f"expected an ssl.SSLContext, got {type(context).__name__}")
        ptr = read_word(context, binding(self).ctx_offset)
        if not ptr or int(self.SSL_CTX_get_options(ptr)) != int(context.options):
            raise BindingError(
                "cannot locate the SSL_CTX inside this SSLContext (unsupported Python build)"
            )
        return int(ptr)

    def ssl_session_pointer(self, session: ssl.SSLSession) -> int:
        """The ``SSL_SESSION *`` behind ``session``, verified against its time and timeout."""
        from .proof import binding, read_word

        if not isinstance(session, ssl.SSLSession):
            raise BindingError(f"expected an ssl.SSLSession, got {type(session).__name__}")
        offset = binding(self).session_offset
        if offset is None:
            raise BindingError("the binding proof did not find the SSL_SESSION inside "
                               "ssl.SSLSession on this Python: sessions cannot be read")
        ptr = read_word(session, offset)
        if (
            not ptr
            or int(self.SSL_SESSION_get_time(ptr)) != session.time
            or int(self.SSL_SESSION_get_timeout(ptr)) != session.timeout
        ):
            raise BindingError("cannot locate the SSL_SESSION inside this SSLSession")
        return int(ptr)

    def session_ticket(self, session: ssl.SSLSession) -> bytes:
        """The ticket a client holds for ``session`` (b"" if the server sent none)."""
        ptr = self.ssl_session_pointer(session)
        data = c_void_p()
        length = c_size_t()
        self.SSL_SESSION_get0_ticket(ptr, ctypes.byref(data), ctypes.byref(length))
        if not data.value or not length.value:
            return b""
        return ctypes.string_at(data.value, length.value)

    def session_der(self, session: ssl.SSLSession) -> bytes:
        """``i2d_SSL_SESSION``: the session as OpenSSL serializes it (ASN.1 DER)."""
        return _i2d(self.i2d_SSL_SESSION, self.ssl_session_pointer(session), "i2d_SSL_SESSION")

    def set_ticket_callback(self, ctx_ptr: int, callback: Any | None) -> None:
        """Install (or, with None, remove) the ticket key callback on ``ctx_ptr``."""
        if self.openssl3:
            # SSL_CTX_set_tlsext_ticket_key_evp_cb(3): returns 1 on success.
            cb = callback if callback is not None else TicketKeyCallback()
            ok = self.SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx_ptr, cb)
        else:
            cb_ptr = ctypes.cast(callback, c_void_p) if callback is not None else None
            ok = self.SSL_CTX_callback_ctrl(ctx_ptr, SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, cb_ptr)
        if ok != 1:
            raise BindingError("libssl refused the ticket key callback")


    def set_session_ticket_callbacks(self, ctx_ptr: int, gen: Any | None, dec: Any | None,
                                     arg: int | None = None) -> None:
        """SSL_CTX_set_session_ticket_cb(3); ``gen``/``dec`` are CFUNCTYPE objects or None."""
        gen_ptr = ctypes.cast(gen, c_void_p) if gen is not None else None
        dec_ptr = ctypes.cast(dec, c_void_p) if dec is not None else None
        if self.SSL_CTX_set_session_ticket_cb(ctx_ptr, gen_ptr, dec_ptr, arg) != 1:
            raise BindingError("libssl refused the session ticket callbacks")

    def set_client_hello_callback(self, ctx_ptr: int, callback: Any | None,
                                  arg: int | None = None) -> None:
        """SSL_CTX_set_client_hello_cb(3); ``callback`` is a CFUNCTYPE object or None."""
        ptr = ctypes.cast(callback, c_void_p) if callback is not None else None
        self.SSL_CTX_set_client_hello_cb(ctx_ptr, ptr, arg)

    def server_chain(self, ctx_ptr: int) -> list[bytes]:
        """DER of the certificate the context serves, then its chain (empty if none yet).

        ``SSL_CTX_get0_certificate`` and ``SSL_CTX_get0_chain_certs`` read the
        context's current certificate; both return borrowed pointers.
        """
        leaf = self.SSL_CTX_get0_certificate(ctx_ptr)
        if not leaf:
            return []
        chain = [_i2d(self.i2d_X509, leaf, "i2d_X509")]
        stack = c_void_p()
        if self.SSL_CTX_ctrl(ctx_ptr, SSL_CTRL_GET_CHAIN_CERTS, 0, ctypes.byref(stack)) == 1 \
                and stack.value:
            for i in range(int(self.OPENSSL_sk_num(stack.value))):
                cert = self.OPENSSL_sk_value(stack.value, i)
                if cert:
                    chain.append(_i2d(self.i2d_X509, cert, "i2d_X509"))
        return chain

    def hello_server_name(self, ssl_ptr: int) -> bytes | None:
        """The host name the ClientHello being processed asks for (None without one).

        ``SSL_client_hello_get0_ext(3)`` on the server_name extension (RFC 6066
        section 3: u16 list length, type host_name (0), u16 length, name).
        ValueError for a malformed extension.
        """
        data = c_void_p()
        length = c_size_t()
        if self.SSL_client_hello_get0_ext(ssl_ptr, 0, ctypes.byref(data),
                                          ctypes.byref(length)) != 1 or not data.value:
            return None
        ext = ctypes.string_at(data.value, length.value)
        if len(ext) < 5:
            raise ValueError("malformed server_name extension")
        listed, host = int.from_bytes(ext[0:2], "big"), int.from_bytes(ext[3:5], "big")
        if listed != len(ext) - 2 or ext[2] != 0 or not 0 < host <= len(ext) - 5:
            raise ValueError("malformed server_name extension")
        return ext[5:5 + host]

    def session_hostname(self, session_ptr: int) -> bytes | None:
        """``SSL_SESSION_get0_hostname``: the server name the session was made for."""
        name = self.SSL_SESSION_get0_hostname(session_ptr)
        return ctypes.string_at(name) if name else None

    def record_server_name(self, ssl_ptr: int, session_ptr: int) -> None:
        """Record the server name the client asked for in the session, if it has none.

        OpenSSL records it only when a servername callback acknowledged it
        (``final_server_name``); stek records it in every session it seals so
        that the decrypt path can hold a ticket to it.  SSL_get_servername(3).
        """
        if self.SSL_SESSION_get0_hostname(session_ptr):
            return
        name = self.SSL_get_servername(ssl_ptr, 0)  # TLSEXT_NAMETYPE_host_name
        if name:
            self.SSL_SESSION_set1_hostname(session_ptr, ctypes.string_at(name))

    def session_id_context(self, session_ptr: int) -> bytes:
        """``SSL_SESSION_get0_id_context``: the context a session was made in."""
        length = c_uint()
        data = self.SSL_SESSION_get0_id_context(session_ptr, ctypes.byref(length))
        return ctypes.string_at(data, length.value) if data and length.value else b""

    def _appdata_born_at(self, session_ptr: int) -> int | None:
        data = c_void_p()
        length = c_size_t()
        if (self.SSL_SESSION_get0_ticket_appdata(session_ptr, ctypes.byref(data),
                                                 ctypes.byref(length)) == 1
                and data.value and length.value == BIRTH_LEN):
            return decode_birth(ctypes.string_at(data.value, BIRTH_LEN))
        return None

    def session_born_at(self, session_ptr: int) -> int:
        """When the full handshake behind this session happened: stek's ticket
        appdata, else the session's own time (a ticket sealed by another server)."""
        born = self._appdata_born_at(session_ptr)
        return born if born is not None else int(self.SSL_SESSION_get_time(session_ptr))

    def stamp_born_at(self, session_ptr: int) -> int:
        """Carry :meth:`session_born_at` in the session's ticket appdata (if it is
        not there yet), so that renewed tickets keep the full handshake's time."""
        born = self._appdata_born_at(session_ptr)
        if born is None:
            born = int(self.SSL_SESSION_get_time(session_ptr))
            blob = encode_birth(born)
            self.SSL_SESSION_set1_ticket_appdata(session_ptr, blob, len(blob))
        return born


def _i2d(i2d: Any, ptr: int, name: str) -> bytes:
    """An OpenSSL object as DER through its ``i2d_*`` function: length first, then bytes."""
    n = int(i2d(ptr, None))
    if n <= 0:
        raise BindingError(f"{name} failed")
    buf = ctypes.create_string_buffer(n)
    out = c_void_p(ctypes.addressof(buf))
    i2d(ptr, ctypes.byref(out))
    return buf.raw


_LIB: LibSSL | None = None


def libssl() -> LibSSL:
    """The process-wide binding (loaded on first use)."""
    global _LIB
    if _LIB is None:
        _LIB = LibSSL()
    return _LIB


__all__ = [
    "CPYTHON_SSL",
    "TICKET_NAME_LEN",
    "CPythonSSL",
    "ClientHelloCallback",
    "DecTicketCallback",
    "ExFreeCallback",
    "GenTicketCallback",
    "LibSSL",
    "PreparedKey",
    "TicketKeyCallback",
    "cpython_ssl",
    "libssl",
]
