"""The binding proven on this interpreter, once per process, before it is used.

HAZMAT.  stek reads the ``SSL_CTX *`` out of a private CPython object
(``PySSLContext`` in ``Modules/_ssl.c``: ``PyObject_HEAD`` then ``SSL_CTX
*ctx``), so before any pointer read that way reaches libssl, four in-memory
handshakes (``ssl.MemoryBIO``, an ephemeral certificate, no network) check,
on this very interpreter:

1. **the pointer**: OpenSSL itself reports each ``SSL_CTX`` it
   makes, through an ex_data ``new_func`` (CRYPTO_get_ex_new_index(3): it is
   called with the new object as ``parent``).  The word read from the proof's
   ``SSLContext`` is only *compared* with the ``SSL_CTX`` OpenSSL reported for
   it, never dereferenced; a mismatch refuses.  Then ``SSL_get_SSL_CTX`` of
   the ``SSL`` OpenSSL hands to a ClientHello callback, for a connection made
   from that context (``wrap_bio``), must be that same ``SSL_CTX``, and
   ``SSL_CTX_get_options`` on it must answer what ``SSLContext.options``
   does.  The same comparison finds the ``SSL_SESSION *`` in
   ``PySSLSession`` (``SSL_get_session`` of that ``SSL``); where it fails,
   only reading sessions is refused.
2. **the callbacks**: a ticket key callback installed on that ``SSL_CTX``
   is invoked to seal a ticket (enc=1) and to open it (enc=0), and the
   session resumes.
3. **the session id context**: where ``_ssl`` applies its own (on the
   ``SSL_CTX`` up to CPython 3.12, on each ``SSL`` since 3.13), and that the
   context stek sets on the ``SSL_CTX`` plus per connection from a
   ClientHello callback is the one a new session is made in, whichever it is.

Later contexts are read at the offset proven here (the same C type); the
``SSL_CTX_get_options`` check stays as a second guard.  Free-threaded builds
are refused: neither this proof nor the compiled callback was shown safe
without the GIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import ssl
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from ctypes import c_void_p
from dataclasses import dataclass
from typing import Any

from ..errors import BindingError
from .libssl import (
    CRYPTO_EX_INDEX_SSL_CTX,
    EVP_MAX_IV_LENGTH,
    SSL_CLIENT_HELLO_SUCCESS,
    TICKET_NAME_LEN,
    ClientHelloCallback,
    ExFreeCallback,
    LibSSL,
    PreparedKey,
    TicketKeyCallback,
)

#: Where ``Modules/_ssl.c`` keeps the C pointer: the first field after the
#: object header (``PySSLContext.ctx``, ``PySSLSession.session``).
POINTER_OFFSET = object.__basicsize__
#: The highest TLS version the proof's client offers (None: the default).
MAXIMUM_VERSION: ssl.TLSVersion | None = None
#: The session id contexts the proof sets: one on the SSL_CTX, one per SSL.
_PROOF_CTX_SID = b"stek-proof-ctx"
_PROOF_SSL_SID = b"stek-proof-ssl"


@dataclass(frozen=True)
class Binding:
    """What the proof saw on this interpreter."""

    #: Offset of ``SSL_CTX *`` in an ``_ssl._SSLContext`` (and of
    #: ``SSL_SESSION *`` in an ``_ssl.SSLSession``).
    ctx_offset: int
    session_offset: int | None  # None: not found (reading SSLSessions is refused)
    #: The session id context ``_ssl`` gives server connections, and where:
    #: "SSL_CTX" (set when the context is made) or "SSL" (per connection).
    python_session_id_context: bytes
    applied_to: str
    #: Seconds the proof took.
    seconds: float


def free_threaded() -> bool:
    """True on a free-threaded CPython build (3.13t, 3.14t).

    ``sys.abiflags`` carries "t" on such builds (PEP 703) and needs no file;
    ``sysconfig`` loads its data module on first use, which a worker that
    dropped its privileges may no longer be allowed to read.
    """
    if "t" in getattr(sys, "abiflags", ""):
        return True
    try:
        return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    except ImportError:
        return False


def read_word(obj: object, offset: int) -> int:
    """The pointer-sized word at ``offset`` inside ``obj``'s own memory (never beyond it)."""
    if offset < 0 or offset + ctypes.sizeof(c_void_p) > type(obj).__basicsize__:
        return 0
    return int(c_void_p.from_address(id(obj) + offset).value or 0)


class _Made:
    """The SSL_CTXs OpenSSL reports making, per thread, while armed.

    Only the SSL_CTX class: SSL_CTX ex_data already has stek's indexes, so
    the freed one costs nothing per connection (an SSL class index would
    make every SSL_new walk it, for the life of the process).
    """

    def __init__(self, lib: LibSSL) -> None:
        self.armed = False
        self.seen: list[tuple[int, int]] = []  # (thread, SSL_CTX *)

        def new(parent: Any, ptr: Any, ad: Any, idx: int, argl: int, argp: Any) -> None:
            # Called by OpenSSL for every SSL_CTX it makes.  Nothing may raise into C.
            try:
                if self.armed and parent:
                    self.seen.append((threading.get_ident(), int(parent)))
            except BaseException:  # noqa: S110
                pass

        self._thunk = ExFreeCallback(new)
        self.index = int(lib.CRYPTO_get_ex_new_index(
            CRYPTO_EX_INDEX_SSL_CTX, 0, None, ctypes.cast(self._thunk, c_void_p), None, None))
        self._lib = lib
        if self.index < 0:
            raise BindingError("the binding proof failed: CRYPTO_get_ex_new_index failed")

    def close(self) -> None:
        self.armed = False
        # CRYPTO_free_ex_index(3): OpenSSL stops calling new_func.  The thunk
        # stays alive in case a thread is inside it right now.
        free = self._lib.lib.CRYPTO_free_ex_index
        free.restype, free.argtypes = ctypes.c_int, (ctypes.c_int, ctypes.c_int)
        free(CRYPTO_EX_INDEX_SSL_CTX, self.index)
        _KEEP.append(self._thunk)

    def during(self, action: Callable[[], Any]) -> tuple[Any, list[int]]:
        """Run ``action``; return its result and the SSL_CTXs OpenSSL made in this thread."""
        start = len(self.seen)
        result = action()
        me = threading.get_ident()
        return result, [p for t, p in self.seen[start:] if t == me]


_KEEP: list[Any] = []


#: The proof's server identity: a self-signed ECDSA P-256 certificate (allowed
#: under every OpenSSL security level and FIPS) and its key, public on
#: purpose.  It only ever serves the proof's own client, over memory BIOs in
#: this process, so its key protects nothing; fixed, so that the proof needs
#: no certificate library (a worker that dropped its privileges after start
#: may no longer be allowed to load one) and no key generation.
PROOF_IDENTITY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgeAnBb9VfNJYWrJkC
jr6h1OIGxVaElMVN2n017BcnyX+hRANCAAQE0IKGpWzoCJEjDxmSZ2qA86f3UfT5
058zC6EHHG2ggvcK22UPF/ajmBpPyyu4dV3GCSmdSO2eLb5hxKeEWV7/
-----END PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIBWjCCAQGgAwIBAgIBATAKBggqhkjOPQQDAjA2MTQwMgYDVQQDDCtzdGVrIGJp
bmRpbmcgcHJvb2YgKHB1YmxpYywgaW4tbWVtb3J5IG9ubHkpMCAXDTI2MDEwMTAw
MDAwMFoYDzIxMjYwMTAxMDAwMDAwWjA2MTQwMgYDVQQDDCtzdGVrIGJpbmRpbmcg
cHJvb2YgKHB1YmxpYywgaW4tbWVtb3J5IG9ubHkpMFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAEBNCChqVs6AiRIw8ZkmdqgPOn91H0+dOfMwuhBxxtoIL3CttlDxf2
o5gaT8sruHVdxgkpnUjtni2+YcSnhFle/zAKBggqhkjOPQQDAgNHADBEAiADbPJj
4P2be+tIbVPY9J3fuNji4Vz2GD5zdYafZBlV6wIgd6aStRPt67UNMoI3TryC7F3d
ChNq13woh509MnnevhM=
-----END CERTIFICATE-----
"""


def _ephemeral_cert(directory: str) -> str:
    """:data:`PROOF_IDENTITY` as one PEM file in ``directory`` (load_cert_chain reads files)."""
    path = os.path.join(directory, "proof.pem")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(PROOF_IDENTITY)
    return path


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, cb: ssl.MemoryBIO,
               sb: ssl.MemoryBIO, cin: ssl.MemoryBIO, sin: ssl.MemoryBIO) -> None:
    """Pump records between two in-memory ends until both finished the handshake."""
    done = [False, False]
    for _ in range(20):
        for i, (obj, out, peer_in) in enumerate(((client, cb, sin), (server, sb, cin))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer_in.write(data)
        if all(done):
            # TLS 1.3 tickets follow the handshake (RFC 8446 section 4.6.1):
            # the client takes them in on its first read.
            data = sb.read()
            if data:
                cin.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                client.read(1)
            return
    raise BindingError("the binding proof failed: the in-memory handshake did not finish")


class _Proof:
    def __init__(self, lib: LibSSL, pem: str) -> None:
        self.lib = lib
        self.pem = pem
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.check_hostname = False
        self.client_ctx.verify_mode = ssl.CERT_NONE
        # Whatever version this OpenSSL's configuration allows (TLS 1.3 by
        # default); tests also prove TLS 1.2 through MAXIMUM_VERSION.
        if MAXIMUM_VERSION is not None:
            self.client_ctx.maximum_version = MAXIMUM_VERSION
        self.ticket_calls: list[tuple[int, int]] = []  # (SSL *, enc)
        self.hello_calls: list[int] = []  # SSL * as OpenSSL hands it to the callback
        self.set_sid = False
        secret = os.urandom(TICKET_NAME_LEN + 32)
        self.key_ = PreparedKey(lib, secret[:TICKET_NAME_LEN], secret[16:32], secret[32:48],
                                0, 0, 0)
        self.ticket_thunk = TicketKeyCallback(self._ticket)
        self.hello_thunk = ClientHelloCallback(self._hello)

    def _mac_init(self, mctx: Any) -> int:
        k = self.key_
        if self.lib.openssl3:
            return int(self.lib.EVP_MAC_CTX_set_params(mctx, k.mac_params))
        return int(self.lib.HMAC_Init_ex(mctx, k.hmac, len(k.hmac), self.lib.sha256, None))

    def _ticket(self, s: Any, name: Any, iv: Any, cctx: Any, mctx: Any, enc: int) -> int:
        try:
            lib, k = self.lib, self.key_
            self.ticket_calls.append((int(s or 0), int(enc)))
            if enc:
                if lib.RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1:
                    return 0
                ctypes.memmove(name, k.name, TICKET_NAME_LEN)
                ok = lib.EVP_EncryptInit_ex(cctx, k.cipher, None, k.aes, iv) == 1
                return 1 if ok and self._mac_init(mctx) == 1 else 0
            if ctypes.string_at(name, TICKET_NAME_LEN) != k.name:
                return 0
            ok = self._mac_init(mctx) == 1
            return 1 if ok and lib.EVP_DecryptInit_ex(cctx, k.cipher, None, k.aes, iv) == 1 \
                else 0
        except BaseException:
            return 0

    def _hello(self, s: Any, al: Any, arg: Any) -> int:
        try:
            self.hello_calls.append(int(s or 0))
            if self.set_sid:
                self.lib.SSL_set_session_id_context(s, _PROOF_SSL_SID, len(_PROOF_SSL_SID))
        except BaseException:  # noqa: S110
            pass
        return SSL_CLIENT_HELLO_SUCCESS

    def connect(self, server_ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
                ) -> tuple[int, ssl.SSLObject, ssl.SSLObject]:
        """One in-memory handshake; the server's SSL * as OpenSSL handed it to the
        ClientHello callback, and both ends (alive while their SSLs are inspected)."""
        sin, sout, cin, cout = (ssl.MemoryBIO() for _ in range(4))
        server = server_ctx.wrap_bio(sin, sout, server_side=True)
        client = self.client_ctx.wrap_bio(cin, cout, session=session)
        start = len(self.hello_calls)
        _handshake(client, server, cout, sout, cin, sin)
        seen = self.hello_calls[start:]
        if len(seen) != 1 or not seen[0]:
            raise BindingError(
                f"the binding proof failed: the ClientHello callback was invoked {len(seen)} "
                f"times for one connection, not once")
        return seen[0], client, server

    def session_sid(self, ssl_ptr: int) -> bytes:
        sess = self.lib.SSL_get_session(ssl_ptr)
        if not sess:
            raise BindingError("the binding proof failed: the proof connection has no session")
        return self.lib.session_id_context(sess)


def _prove(lib: LibSSL, ctx_offset: int, session_offset: int) -> Binding:
    if free_threaded():
        raise BindingError(
            "this is a free-threaded CPython build (Py_GIL_DISABLED): stek's binding and "
            "compiled callback were not shown safe without the GIL; use the default build")
    start = time.perf_counter()
    made = _Made(lib)
    try:
        return _steps(lib, made, ctx_offset, session_offset, start)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise BindingError(f"the binding proof failed: its in-memory handshake raised "
                           f"{type(exc).__name__}: {exc}".replace("\n", " ")) from None
    finally:
        made.close()


def _steps(lib: LibSSL, made: _Made, ctx_offset: int, session_offset: int,
           start: float) -> Binding:
    with tempfile.TemporaryDirectory(prefix="stek-proof-") as tmp:
        proof = _Proof(lib, _ephemeral_cert(tmp))
        # The thunks outlive the proof: its SSL_CTX may call them until freed.
        _KEEP.append((proof.ticket_thunk, proof.hello_thunk))
        made.armed = True
        server_ctx, ctxs = made.during(lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        server_ctx.load_cert_chain(proof.pem)
    # 1. The pointer: compared with what OpenSSL reported, before any use.
    word = read_word(server_ctx, ctx_offset)
    if len(ctxs) != 1 or word != ctxs[0]:
        raise BindingError(
            f"the binding proof failed: the SSL_CTX * read from ssl.SSLContext at offset "
            f"{ctx_offset} is not the SSL_CTX OpenSSL made for it")
    ctx_ptr = word
    if int(lib.SSL_CTX_get_options(ctx_ptr)) != int(server_ctx.options):
        raise BindingError("the binding proof failed: SSL_CTX_get_options does not answer "
                           "SSLContext.options")
    # 2. The ticket key callback, and 3. where _ssl sets its session id context.
    # The ClientHello callback reports each connection's SSL * (and sets no
    # session id context yet).
    lib.set_ticket_callback(ctx_ptr, proof.ticket_thunk)
    lib.set_client_hello_callback(ctx_ptr, proof.hello_thunk)
    s1, _, server1 = proof.connect(server_ctx)
    if lib.SSL_get_SSL_CTX(s1) != ctx_ptr:
        raise BindingError(
            "the binding proof failed: the SSL_CTX OpenSSL reports for a connection made "
            "from the SSLContext (SSL_get_SSL_CTX) is not the one read from it")
    python_sid = proof.session_sid(s1)
    if not any(s == s1 and enc == 1 for s, enc in proof.ticket_calls):
        raise BindingError("the binding proof failed: the ticket key callback was never "
                           "invoked to seal a ticket")
    # An SSLSession (read by stek.inspection, not by install()): where it is not
    # found, only reading sessions is refused.
    py_session = server1.session
    sess_ptr = lib.SSL_get_session(s1)
    found_session: int | None = session_offset
    if py_session is None or not sess_ptr or \
            read_word(py_session, session_offset) != sess_ptr:
        found_session = None
    if lib.SSL_CTX_set_session_id_context(ctx_ptr, _PROOF_CTX_SID,
                                          len(_PROOF_CTX_SID)) != 1:
        raise BindingError("the binding proof failed: SSL_CTX_set_session_id_context")
    s2, *keep2 = proof.connect(server_ctx)
    seen = proof.session_sid(s2)
    applied_to = "SSL_CTX" if seen == _PROOF_CTX_SID else "SSL"
    # stek's way: the SSL_CTX's and a ClientHello callback's, per connection.
    proof.set_sid = True
    s3, client3, *keep3 = proof.connect(server_ctx)
    if proof.session_sid(s3) != _PROOF_SSL_SID:
        raise BindingError(
            "the binding proof failed: the session id context set from the ClientHello "
            "callback is not the one the session was made in")
    s4, client4, *keep4 = proof.connect(server_ctx, session=client3.session)
    if not client4.session_reused or not any(s == s4 and enc == 0
                                             for s, enc in proof.ticket_calls):
        raise BindingError("the binding proof failed: the ticket key callback was never "
                           "invoked to open a ticket (no resumption)")
    lib.set_client_hello_callback(ctx_ptr, None)
    lib.set_ticket_callback(ctx_ptr, None)
    del server1, keep2, client3, keep3, client4, keep4
    return Binding(ctx_offset, found_session, python_sid, applied_to,
                   time.perf_counter() - start)


_LOCK = threading.Lock()
#: The proof's outcome per binding: a Binding, or the BindingError it ended in
#: (raised again, without a second proof, at every later install).
_PROVEN: dict[int, Binding | BindingError] = {}
#: The offsets the proof checks; tests move them to inject a wrong pointer.
OFFSETS = {"ctx": POINTER_OFFSET, "session": POINTER_OFFSET}


def binding(lib: LibSSL) -> Binding:
    """This process's proven :class:`Binding` (the proof runs at the first call).

    Raises :class:`~stek.errors.BindingError` with one line naming what failed.
    """
    with _LOCK:
        proven = _PROVEN.get(id(lib))
        if proven is None:
            try:
                proven = _prove(lib, OFFSETS["ctx"], OFFSETS["session"])
            except BindingError as exc:
                proven = exc
            _PROVEN[id(lib)] = proven
    if isinstance(proven, BindingError):
        raise BindingError(str(proven))
    return proven


__all__ = ["OFFSETS", "POINTER_OFFSET", "Binding", "binding", "free_threaded", "read_word"]
