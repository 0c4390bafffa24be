"""``install()``: put a store's keyring behind OpenSSL's ticket-key callback.

Data flows one way: store -> snapshot -> keyring -> callback answer.  The
callback (one call per ticket issued or presented) reads an in-memory
snapshot and does no I/O; a background thread keeps that snapshot current
(store notification, plus a periodic re-read as a backstop) and, with
``rotate=True``, rotates the shared ring itself when a change is due.

When the store cannot be read, the last snapshot keeps serving: tickets
under keys inside their window still resume, the active key keeps
encrypting until it retires, after which no ticket is issued at all (rather
than stretching any key's life).  Full handshakes never fail, not even when
the store cannot be read at start (see ``install(strict=...)``).

This module holds the handle (:class:`Installation`) and ``install()``; the
compiled callback's loading and slots are in :mod:`stek._accel`, the Python
callbacks in :mod:`stek._ctypes_callbacks`, the ring they answer from in
:mod:`stek._snapshot`, their lifetime in :mod:`stek._pinning`, their
counters in :mod:`stek._counters`, and the background refresh in
:mod:`stek._refresh` (which sees an installation as a ``Member``).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from ._accel import Slot, accelerator
from ._accel import accelerated_available as accelerated_available  # kept importable from here
from ._counters import _FIELDS
from ._counters import Counters as Counters  # kept importable from here
from ._ctypes_callbacks import Callbacks, CallbackSet, PythonCallbacks
from ._pinning import _PINNED as _PINNED  # kept importable from here
from ._pinning import callback_set
from ._refresh import Membership, shared_store
from ._snapshot import _Snapshot
from .errors import BindingError, ConfigError, NotInitialized, RolledBack, StoreError
from .hazmat.libssl import (
    SSL_MAX_SID_CTX_LENGTH,
    ClientHelloCallback,
    DecTicketCallback,
    GenTicketCallback,
    LibSSL,
    TicketKeyCallback,
    libssl,
)
from .hazmat.proof import binding
from .keyring import Keyring
from .mirror import MirroredRing, mirror_source
from .rotation import rotate as rotate_store
from .schedule import (
    DECRYPTED_TICKET,
    LIFECYCLE,
    Policy,
    State,
    TicketStatus,
    next_change,
)
from .scope import check_scope, scoped
from .stores import KeyStore
from .trust import trust_session_id_context

log = logging.getLogger("stek.installation")

#: Attribute under which the installation lives on its SSLContext, tying the
#: C callback's lifetime to the context's.
_ATTR = "_stek_installation"


def _check_sid_ctx(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray)) or not 1 <= len(value) <= \
            SSL_MAX_SID_CTX_LENGTH:
        raise ConfigError(
            f"session_id_context must be 1 to {SSL_MAX_SID_CTX_LENGTH} bytes "
            f"(SSL_MAX_SID_CTX_LENGTH), e.g. stek.compat.HAPROXY_SESSION_ID_CONTEXT"
        )
    return bytes(value)


class Installation(PythonCallbacks):
    """The handle ``install()`` returns: counters, the current ring, ``uninstall()``."""

    def __init__(self, context: ssl.SSLContext, store: KeyStore, ring: Keyring, *,
                 rotate: bool, clock: Callable[[], float], lib: LibSSL,
                 accel: Any = None, accel_required: bool = False,
                 session_id_context: bytes | None = None, scope: str | None = None) -> None:
        given = _check_sid_ctx(session_id_context)
        #: The key scope this context serves (stek.scope); None: the ring's own keys.
        self.scope = check_scope(scope)
        self._ctx_ptr = lib.ssl_ctx_pointer(context)
        #: The session id context connections resume in (SSL_CTX_set_session_id_context(3)):
        #: the one given, else the hash of this context's trust configuration
        #: (stek.trust), so no session crosses a trust boundary.
        self.session_id_context = given if given is not None else _trust_context(lib, context,
                                                                                 self._ctx_ptr)
        sid = self.session_id_context
        self.store = store
        self.rotate = rotate
        self._clock = clock
        self._lib = lib
        self._ctx_ref = weakref.ref(context)
        self._no_peer_logged = 0
        self._counts = dict.fromkeys(_FIELDS, 0)
        self._count_lock = threading.Lock()
        self._accel = accel
        self._slot: int | None = None
        if accel is not None:
            # The C callback takes the decision table from here, row by row.
            order = (State.PENDING, State.ACTIVE, State.DECRYPT_ONLY, State.EXPIRED)
            self._slot = accel.acquire(
                bytes(int(LIFECYCLE[st].answer_tls12) for st in order),
                bytes(int(LIFECYCLE[st].answer_tls13) for st in order),
                bytes(int(DECRYPTED_TICKET[st]) for st in TicketStatus),
                sid, True, self._ctx_ptr,  # a slot this SSL_CTX holds is taken back
            )
            if self._slot is None and accel_required:
                raise BindingError(
                    f"all {accel.SLOTS} compiled-callback slots are in use in this process"
                )
        self._slot_owner = Slot(accel, self._slot) if self._slot is not None else None
        self._source = ring
        self._snap = _Snapshot(lib, scoped(ring, self.scope))
        self._load_accel(self._snap.ring)
        self._policy: Policy | None = None
        self._max_age = ring.policy.accept_for
        self._apply_policy(ring.policy)
        arg: int | None = None
        self._thunks: CallbackSet | None = None
        self._served: Callbacks | None = None
        if self._slot is not None:
            # The C callback: same table, same counters, no Python per handshake.
            # The SSL_CTX holds the slot until OpenSSL frees it.
            accel.attach(self._slot, self._ctx_ptr)
            self._cfunc = TicketKeyCallback(accel.address(self._slot))
            self._gen_cb = GenTicketCallback(accel.gen_address())
            self._dec_cb = DecTicketCallback(accel.dec_address())
            self._hello_cb = ClientHelloCallback(accel.client_hello_address())
            arg = accel.slot_pointer(self._slot)
        else:
            # The SSL_CTX's one set of ctypes thunks, pinned before OpenSSL is
            # handed any of it and reused by a re-install (stek._pinning).
            self._thunks = callback_set(lib, self._ctx_ptr)
            self._served = self._make_callbacks(sid)
            self._thunks.serve(self._served)
            self._cfunc = self._thunks.ticket_key
            self._gen_cb = self._thunks.gen
            self._dec_cb = self._thunks.dec
            self._hello_cb = self._thunks.hello
        lib.set_ticket_callback(self._ctx_ptr, self._cfunc)
        # SSL_CTX_set_session_ticket_cb(3): carry each session's birth in its
        # ticket and refuse sessions older than accept_for (see
        # stek.schedule.decrypted_ticket_answer).
        lib.set_session_ticket_callbacks(self._ctx_ptr, self._gen_cb, self._dec_cb, arg)
        # The session id context is set on the SSL_CTX, which connections made
        # later inherit (SSL_new) and which an SNI switch compares against
        # (SSL_set_SSL_CTX), and on each connection from the ClientHello
        # callback, where CPython 3.13 sets its own per connection (see
        # stek.hazmat.libssl.CPythonSSL.applied_to).
        if lib.SSL_CTX_set_session_id_context(self._ctx_ptr, sid, len(sid)) != 1:
            raise BindingError("libssl refused the session id context")
        lib.set_client_hello_callback(self._ctx_ptr, self._hello_cb, arg)
        self._membership = Membership()
        self._membership.join(store, _member_of(self))
        _LIVE.add(self)
        # When the context (and so this installation) is collected, free the
        # slot at once, stop the store watch and let the refresher thread exit
        # (from that thread).
        weakref.finalize(self, _collected, self._slot_owner, self._membership)

    def __repr__(self) -> str:
        scope = f", scope={self.scope!r}" if self.scope is not None else ""
        return f"Installation(store={self.store.url!r}{scope}, generation={self.ring.generation})"

    # -- public ----------------------------------------------------------------
    @property
    def ring(self) -> Keyring:
        """The snapshot the callback is answering from right now (this scope's keys)."""
        return self._snap.ring

    @property
    def counters(self) -> Counters:
        if self._slot is not None:
            return Counters(*self._accel.counters(self._slot))
        with self._count_lock:
            return Counters(**self._counts)

    @property
    def accelerated(self) -> bool:
        """True when the compiled callback serves this context (else the ctypes one)."""
        return self._slot is not None

    @property
    def installed(self) -> bool:
        return not self._membership.stop.is_set()

    @property
    def _thread(self) -> threading.Thread | None:
        return self._membership.thread

    @property
    def last_refresh(self) -> float | None:
        """``time.time()`` of the last successful store read; None before the first."""
        return self._membership.last_refresh

    @property
    def store_ok(self) -> bool:
        """True when the last store read succeeded (False before the first)."""
        return self._membership.store_ok

    def refresh(self) -> Keyring:
        """Re-read the store now (rotating first if ``rotate`` and due)."""
        now = self._clock()
        ring = self._snap.ring
        try:
            if self.rotate and next_change(ring.keys, ring.policy, now) <= now:
                try:
                    ring = rotate_store(self.store, now=now, create=ring.policy).ring
                except MirroredRing as exc:
                    # The file became the agent's mirror since install(): follow it.
                    log.warning("%s; following it, no longer rotating", exc)
                    self.rotate = False
                    ring = self.store.read()
            else:
                try:
                    ring = self.store.read()
                except (NotInitialized, RolledBack):
                    if not self.rotate:
                        raise
                    # Empty or rolled back: a rotating process writes its
                    # snapshot back (stores/shared.py, SharedStore.update).
                    ring = rotate_store(self.store, now=now, create=ring.policy).ring
        except BaseException:
            self._membership.record(ok=False)
            raise
        self._membership.record(ok=True)
        self._swap(ring)
        return ring

    def uninstall(self) -> None:
        """Remove the callback (OpenSSL falls back to its built-in key) and stop refreshing."""
        if self._membership.stop.is_set():
            return
        final = self.counters
        self._membership.stop.set()
        ctx = self._ctx_ref()
        if ctx is not None:
            self._lib.set_ticket_callback(self._ctx_ptr, None)
            self._lib.set_session_ticket_callbacks(self._ctx_ptr, None, None)
            self._lib.set_client_hello_callback(self._ctx_ptr, None)
            if getattr(ctx, _ATTR, None) is self:
                delattr(ctx, _ATTR)
        if self._thunks is not None and self._served is not None:
            # The SSL_CTX keeps the thunks; they no longer keep this installation.
            self._thunks.release(self._served)
        self._slot = None
        self._membership.leave()
        if self._slot_owner is not None:
            self._slot_owner.release()
        self._counts = {f: getattr(final, f) for f in _FIELDS}

    # -- internals ---------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(): restart the watch and the refresher
        # so a forked worker keeps following the ring.  Locks another thread
        # may have held at fork time are replaced.
        self._count_lock = threading.Lock()
        self._membership.rejoin()

    def _swap(self, ring: Keyring) -> None:
        if ring.generation == self._source.generation and ring == self._source:
            return
        self._source = ring
        self._snap = _Snapshot(self._lib, scoped(ring, self.scope))
        self._load_accel(self._snap.ring)
        self._apply_policy(ring.policy)
        log.info("keyring generation %d loaded (%d keys)", ring.generation, len(ring))

    def _load_accel(self, ring: Keyring) -> None:
        if self._slot is None:
            return
        self._accel.load(self._slot, [
            (k.name, k.aes_key, k.hmac_key, k.activates_at, k.retires_at, k.expires_at,
             self._lib.aes_256_cbc if len(k.aes_key) == 32 else self._lib.aes_128_cbc)
            for k in ring.keys
        ])

    def _apply_policy(self, policy: Policy) -> None:
        if policy == self._policy:
            return
        self._policy = policy
        self._max_age = policy.accept_for
        if self._slot is not None:
            self._accel.set_max_age(self._slot, policy.accept_for)
        # The session timeout is the ticket lifetime hint (RFC 5077 section 3.3;
        # RFC 8446 section 4.6.1 ticket_lifetime).  A ticket issued at any
        # instant of its key's active window is accepted for at least
        # accept_for more seconds, so that bound never promises more than the
        # ring will honour (s2n #4583), and OpenSSL refuses sessions older than it.
        self._lib.SSL_CTX_set_timeout(self._ctx_ptr, policy.accept_for)

    def _report(self) -> None:
        """From the background thread: log the first no-peer-certificate refusal, once."""
        refused = self.counters.rejected_no_peer_cert
        if refused and not self._no_peer_logged:
            self._no_peer_logged = refused
            log.warning(
                "a ticket whose session has no client certificate was presented to a context "
                "that requires one (session id context %s): full handshake instead (counted in "
                "rejected_no_peer_cert; logged once per context)", self.session_id_context.hex())

    def _bump(self, name: str) -> None:
        with self._count_lock:
            self._counts[name] += 1


class _Member:
    """An installation as its refresh group sees it (:class:`stek._refresh.Member`),
    so that what only the group calls stays off Installation's public API."""

    __slots__ = ("inst",)

    def __init__(self, inst: Installation) -> None:
        self.inst = inst

    @property
    def rotate(self) -> bool:
        return self.inst.rotate

    @property
    def ring(self) -> Keyring:
        return self.inst.ring

    def clock(self) -> float:
        return self.inst._clock()

    def refresh(self) -> Keyring:
        return self.inst.refresh()

    def swap(self, ring: Keyring) -> None:
        self.inst._swap(ring)

    def report(self) -> None:
        self.inst._report()


def _member_of(inst: Installation) -> Callable[[], _Member | None]:
    """How the group reaches ``inst``: weakly, so a collected context leaves its group."""
    ref = weakref.ref(inst)
    return lambda: None if (live := ref()) is None else _Member(live)


def _collected(slot: Slot | None, membership: Membership) -> None:
    """The finalizer of a collected installation: free its slot at once, leave its
    group from the loop thread (Membership.collected: a finalizer waits for nothing)."""
    if slot is not None:
        slot.release()
    membership.collected()


#: Installations alive in this process, for the fork handler.
_LIVE: weakref.WeakSet[Installation] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a forked child, every live installation rejoins a refresh group.

    This module imports stek._refresh and stek._accel first, so their fork
    hooks, registered on import, have run by now (``after_in_child`` hooks run
    in registration order): the parent's groups are forgotten and the
    compiled callback's mutexes re-created before any refresh loads a ring.
    """
    for inst in list(_LIVE):
        inst._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _trust_context(lib: LibSSL, context: ssl.SSLContext, ctx_ptr: int) -> bytes:
    """The session id context of ``context``'s trust configuration (stek.trust)."""
    mode = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 2}[context.verify_mode]
    cas = context.get_ca_certs(binary_form=True) if mode else []
    return trust_session_id_context(lib.server_chain(ctx_ptr), mode, cas)


def install(
    context: ssl.SSLContext,
    store: KeyStore | str | None = None,
    *,
    rotate: bool = False,
    policy: Policy | None = None,
    clock: Callable[[], float] = time.time,
    accelerate: bool | None = None,
    session_id_context: bytes | None = None,
    strict: bool = False,
    scope: str | None = None,
) -> Installation:
    """Serve session tickets on ``context`` with the keys of ``store``.

    ``store`` is a store object or URL; None means ``$STEK_STORE`` (then the
    default file path).  With ``rotate=True`` this process also rotates the
    shared ring when due (and creates it with ``policy`` if it is empty), so a
    single host needs no agent.

    Raises :class:`~stek.errors.BindingError` when the callback cannot be
    installed (statically linked Python, client-side context, OP_NO_TICKET,
    already installed), and ConfigError for a bad store URL or missing KEK.

    A store that cannot be read (down, empty, corrupt, sealed under another
    KEK) does not stop TLS: the context serves full handshakes and issues
    no ticket, one warning is logged, and the ring is picked up as soon as
    the store answers (``store_ok`` and ``last_refresh`` tell).  With
    ``strict=True`` such a store raises its StoreError here instead.

    ``accelerate``: None (default) uses the compiled callback when it is built
    and ``clock`` is the real clock, else the pure-Python ctypes callback;
    True requires the compiled one; False forces the Python one.

    ``session_id_context``: the context sessions resume in (1-32 bytes,
    SSL_CTX_set_session_id_context(3)).  None (the default) hashes this
    context's trust configuration: its certificate chain, verify mode and
    client CAs (:mod:`stek.trust`), so a session resumes only where it was
    made under the same trust; configure the context before installing.
    OpenSSL resumes a session only in the context it was made in, so a
    Python server joins an nginx or HAProxy fleet on the same ring with
    theirs: see :mod:`stek.compat`.  Whatever the context, a session without
    a client certificate never resumes on a connection that requires one.

    ``scope``: serve this key scope's keys, derived from the ring's
    (:mod:`stek.scope`): servers in different scopes never resume each
    other's tickets, on one ring and one rotation schedule.
    """
    if not isinstance(context, ssl.SSLContext):
        raise BindingError(f"install() needs an ssl.SSLContext, got {type(context).__name__}")
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise BindingError("this is a client-side context: session ticket keys are server-side")
    if context.options & ssl.OP_NO_TICKET:
        raise BindingError(
            "OP_NO_TICKET is set on this context: OpenSSL would never call the ticket "
            "callback (TLS 1.3 would use stateful tickets); clear it first"
        )
    check_scope(scope)
    existing = getattr(context, _ATTR, None)
    if existing is not None and existing.installed:
        raise BindingError("stek is already installed on this context (uninstall() it first)")
    lib = libssl()
    binding(lib)  # proven on this interpreter at the first install (stek.hazmat.proof)
    st = shared_store(store)
    now = clock()
    error: StoreError | None = None
    if rotate:
        source = mirror_source(st)
        if source is not None:
            # A mirror is the agent's to write: serve it read-only rather than
            # take the server down over a flag (the README's snippet sets it).
            log.warning("%s is a mirror of %s kept by 'stek agent --mirror': serving it "
                        "read-only (rotate=True ignored; the agent rotates the fleet store)",
                        st.url, source)
            rotate = False
    try:
        ring = rotate_store(st, now=now, create=policy or Policy()).ring if rotate else st.read()
    except NotInitialized as exc:
        hinted = NotInitialized(f"{exc} (or pass rotate=True to let this server create it)")
        if strict:
            raise hinted from None
        error, ring = hinted, Keyring(policy or Policy())
    except StoreError as exc:
        if strict:
            raise
        # No ring yet: an empty one.  The callback issues no ticket and every
        # presented ticket gets a full handshake, until the refresher reads one.
        error, ring = exc, Keyring(policy or Policy())
    accel = None
    if accelerate is not False:
        accel = accelerator(lib) if clock is time.time else None
        if accel is None and accelerate:
            raise BindingError(
                "the compiled ticket callback is not available (stek.hazmat._fastcb not built, "
                "or a custom clock was given)"
            )
    inst = Installation(context, st, ring, rotate=rotate, clock=clock, lib=lib, accel=accel,
                        accel_required=bool(accelerate), session_id_context=session_id_context,
                        scope=scope)
    inst._membership.started(error)
    setattr(context, _ATTR, inst)
    return inst
