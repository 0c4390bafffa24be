"""The ticket callbacks in Python, handed to libssl through ctypes: the
ticket-key callback, the session ticket generate/decrypt pair and the
ClientHello callback, serving a context the compiled ones
(stek.hazmat._fastcb) do not: not built, a custom clock, ``accelerate=False``
or no compiled slot left (see :func:`stek.install`).

Each installation makes its callbacks as Python functions (:class:`Callbacks`);
OpenSSL is handed the ctypes thunks of its SSL_CTX's :class:`CallbackSet`,
which call the functions of whichever installation the set serves now.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from .hazmat.libssl import (
    EVP_MAX_IV_LENGTH,
    SSL_CLIENT_HELLO_SUCCESS,
    SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
    TICKET_NAME_LEN,
    TLS1_3_VERSION,
    ClientHelloCallback,
    DecTicketCallback,
    GenTicketCallback,
    LibSSL,
    PreparedKey,
    TicketKeyCallback,
)
from .schedule import (
    LIFECYCLE,
    Answer,
    State,
    TicketReturn,
    TicketStatus,
    decrypted_ticket_answer,
    state_of,
)

if TYPE_CHECKING:
    from ._snapshot import _Snapshot

log = logging.getLogger("stek.installation")


class Callbacks(NamedTuple):
    """One installation's four ticket callbacks, as Python functions."""

    ticket_key: Callable[[Any, Any, Any, Any, Any, int], int]
    gen: Callable[[Any, Any], int]
    dec: Callable[[Any, Any, Any, int, int, Any], int]
    hello: Callable[[Any, Any, Any], int]


class CallbackSet:
    """The four ctypes thunks one SSL_CTX is given, each calling the
    :class:`Callbacks` the set serves now (none: the answers of a context
    without stek's keys: no ticket, a full handshake).

    An SSL_CTX gets one set, at its first installation, kept until OpenSSL
    frees it (stek._pinning); a re-install on it hands OpenSSL the same
    thunks again, serving the new installation, where new thunks would pin
    one more set (and the installation it closes over) per re-install.  A
    set is never freed on a re-install either: OpenSSL loads a callback's
    pointer from the SSL_CTX without a lock, so another thread's handshake
    may be about to call the thunk just replaced.
    """

    def __init__(self) -> None:
        self.serving: Callbacks | None = None
        # Each thunk's answer when no installation is served, or when the
        # served callback raises: no ticket; 1 (0 would abort the handshake,
        # SSL_CTX_set_session_ticket_cb(3)); a full handshake; go on.
        self.ticket_key = TicketKeyCallback(self._thunk(0, int(Answer.NO_TICKET)))
        self.gen = GenTicketCallback(self._thunk(1, 1))
        self.dec = DecTicketCallback(self._thunk(2, int(TicketReturn.IGNORE_RENEW)))
        self.hello = ClientHelloCallback(self._thunk(3, SSL_CLIENT_HELLO_SUCCESS))

    def _thunk(self, index: int, fallback: int) -> Callable[..., int]:
        """What OpenSSL calls: the served :class:`Callbacks`' function at ``index``.

        Nothing may raise into C (ctypes would print it and answer an undefined
        value): each Callbacks function catches its own failures, and this
        catches the rest (an asynchronous KeyboardInterrupt).
        """

        def call(*args: Any) -> int:
            try:
                fns = self.serving
                return fallback if fns is None else fns[index](*args)
            except BaseException:
                return fallback

        return call

    def serve(self, fns: Callbacks) -> None:
        """From now on the thunks call ``fns``."""
        self.serving = fns

    def release(self, fns: Callbacks) -> None:
        """Stop calling ``fns`` (an uninstall), unless another installation
        already took the set over.  Like install() and uninstall() on one
        context, not meant to race with serve()."""
        if self.serving is fns:
            self.serving = None


class PythonCallbacks:
    """The pure-Python ctypes ticket callbacks (the compiled ones, stek.hazmat._fastcb,
    serve the same contract in C); mixed into :class:`stek.installation.Installation`,
    whose state they read."""

    _lib: LibSSL
    _clock: Callable[[], float]
    _snap: _Snapshot
    _max_age: int
    session_id_context: bytes

    if TYPE_CHECKING:
        def _bump(self, name: str) -> None: ...

    def _make_callbacks(self, sid: bytes) -> Callbacks:
        return Callbacks(self._make_callback(), self._make_gen_callback(),
                         self._make_dec_callback(), self._make_hello_callback(sid))

    def _make_gen_callback(self) -> Callable[[Any, Any], int]:
        lib = self._lib

        def gen(ssl_ptr: Any, arg: Any) -> int:
            # Before a ticket is sealed: stamp the session with its birth (a
            # resumed one already carries it).  Answering 0 would abort the
            # handshake, so every failure still answers 1.
            try:
                sess = lib.SSL_get_session(ssl_ptr)
                if sess:
                    lib.stamp_born_at(sess)
                    lib.record_server_name(ssl_ptr, sess)
            except BaseException:
                with contextlib.suppress(BaseException):
                    self._bump("errors")
            return 1

        return gen

    def _make_dec_callback(self) -> Callable[[Any, Any, Any, int, int, Any], int]:
        lib = self._lib
        # Session instants are OpenSSL's (the real clock), not the key
        # schedule's injectable clock.
        clock = time.time
        success = (TicketStatus.SUCCESS, TicketStatus.SUCCESS_RENEW)
        use = (TicketReturn.USE, TicketReturn.USE_RENEW)
        sid_ctx = self.session_id_context
        verify_mode = lib.SSL_get_verify_mode
        peer = lib.SSL_SESSION_get0_peer

        def dec(ssl_ptr: Any, sess: Any, name: Any, name_len: int, status: int,
                arg: Any) -> int:
            # OpenSSL's verdict on a presented ticket (MAC checked, state
            # decrypted): where a resumption is counted.
            try:
                now = int(clock())  # whole seconds, as the C callback's time(NULL)
                born = now
                ours = False
                if status in success and sess:
                    # Sealed by stek: it carries stek's appdata before it is stamped here.
                    stamped = lib._appdata_born_at(sess)
                    ours = stamped is not None
                    born = stamped if stamped is not None else lib.stamp_born_at(sess)
                answer = decrypted_ticket_answer(status, born, now, self._max_age)
                if status in success and sess:
                    if answer not in use:
                        self._bump("rejected_too_old")
                    else:
                        # OpenSSL refuses a session from another session id
                        # context right after this callback (ssl_get_prev_session).
                        same = lib.session_id_context(sess) == sid_ctx
                        # The last check (docs/trust.md): a session without a
                        # client certificate never resumes where one is required.
                        if verify_mode(ssl_ptr) & SSL_VERIFY_FAIL_IF_NO_PEER_CERT \
                                and not peer(sess):
                            if same:
                                self._bump("rejected_no_peer_cert")
                            answer = TicketReturn.IGNORE_RENEW
                        elif not _same_server_name(lib, ssl_ptr, sess, ours):
                            if same:
                                self._bump("rejected_other_name")
                            answer = TicketReturn.IGNORE_RENEW
                        elif same:
                            self._bump("resumed")
                            if answer == TicketReturn.USE_RENEW:
                                self._bump("renewed")
                return int(answer)
            except BaseException:
                with contextlib.suppress(BaseException):
                    self._bump("errors")
                return int(TicketReturn.IGNORE_RENEW)

        return dec

    def _make_hello_callback(self, sid: bytes) -> Callable[[Any, Any, Any], int]:
        set_sid = self._lib.SSL_set_session_id_context

        def hello(ssl_ptr: Any, al: Any, arg: Any) -> int:
            # SSL_CTX_set_client_hello_cb(3): before OpenSSL looks at any session.
            with contextlib.suppress(BaseException):
                set_sid(ssl_ptr, sid, len(sid))
            return SSL_CLIENT_HELLO_SUCCESS

        return hello

    def _make_callback(self) -> Callable[[Any, Any, Any, Any, Any, int], int]:
        lib = self._lib
        clock = self._clock
        bump = self._bump
        rand_bytes = lib.RAND_bytes
        enc_init = lib.EVP_EncryptInit_ex
        dec_init = lib.EVP_DecryptInit_ex
        ssl_version = lib.SSL_version
        memmove = ctypes.memmove
        string_at = ctypes.string_at
        lifecycle = LIFECYCLE
        expired = State.EXPIRED
        if lib.openssl3:
            set_mac = lib.EVP_MAC_CTX_set_params

            def mac_init(mctx: Any, key: PreparedKey) -> int:
                return int(set_mac(mctx, key.mac_params))
        else:
            hmac_init = lib.HMAC_Init_ex
            sha256 = lib.sha256

            def mac_init(mctx: Any, key: PreparedKey) -> int:
                return int(hmac_init(mctx, key.hmac, len(key.hmac), sha256, None))

        def callback(ssl_ptr: Any, name_ptr: Any, iv_ptr: Any, cctx: Any, mctx: Any,
                     enc: int) -> int:
            # SSL_CTX_set_tlsext_ticket_key_cb(3).  Nothing may raise out of
            # here: ctypes would print it and answer an undefined value.
            try:
                snap = self._snap
                now = clock()
                if enc:
                    key = snap.encrypting(now)
                    if key is None:
                        bump("no_active_key")
                        return Answer.NO_TICKET  # no ticket; the handshake goes on
                    # "The initialization vector iv should be a random value."
                    # RAND_bytes returns 1 on success (the man page's example
                    # tests it the wrong way round).  Any OpenSSL failure
                    # answers 0, no ticket: -1 would abort the handshake.
                    if rand_bytes(iv_ptr, EVP_MAX_IV_LENGTH) != 1:
                        bump("errors")
                        return Answer.NO_TICKET
                    memmove(name_ptr, key.name, TICKET_NAME_LEN)
                    if enc_init(cctx, key.cipher, None, key.aes, iv_ptr) != 1 or \
                            mac_init(mctx, key) != 1:
                        bump("errors")
                        return Answer.NO_TICKET
                    bump("issued")
                    return Answer.OK
                # enc=0: name and IV come from the ticket: attacker-controlled.
                key = snap.by_name.get(string_at(name_ptr, TICKET_NAME_LEN))
                if key is None:
                    bump("rejected_unknown")
                    return Answer.NO_TICKET
                state = state_of(key, now)
                if state is expired:
                    bump("rejected_expired")
                    return Answer.NO_TICKET
                row = lifecycle[state]
                answer = row.answer_tls12
                if row.answer_tls13 != answer and ssl_version(ssl_ptr) == TLS1_3_VERSION:
                    answer = row.answer_tls13
                # A failed init answers 0, a full handshake, never -1 (an abort).
                if mac_init(mctx, key) != 1 or \
                        dec_init(cctx, key.cipher, None, key.aes, iv_ptr) != 1:
                    bump("errors")
                    return Answer.NO_TICKET
                # Resumptions are counted in dec, once OpenSSL checked the MAC.
                bump("accepted_by_name")
                return int(answer)
            except BaseException:
                try:
                    bump("errors")
                    log.exception("stek ticket callback failed; answering 0")
                except BaseException:  # noqa: S110
                    pass
                return Answer.NO_TICKET

        return callback


def _same_server_name(lib: LibSSL, ssl_ptr: int, sess: int, ours: bool) -> bool:
    """Was the session made for the server name the ClientHello asks for?

    RFC 6066 section 3: a server "MUST NOT accept the request to resume the
    session if the server_name extension contains a different name"; stek
    holds TLS 1.3 to the same rule, because an SNI callback may switch the
    connection to another context after its PSK was accepted (docs/trust.md).
    DNS names compare without regard to ASCII case (RFC 4343).  A session
    without a name that stek sealed (``ours``) was made without SNI, since
    stek records every name asked; one sealed elsewhere may come from a
    server that records none (no servername callback), and is left to the
    session id context.
    """
    try:
        want = lib.hello_server_name(ssl_ptr)
    except ValueError:
        return False
    had = lib.session_hostname(sess)
    if had is None:
        return want is None or not ours
    return want is not None and had.lower() == want.lower()
