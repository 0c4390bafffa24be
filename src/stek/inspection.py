"""Explain a session ticket against a keyring: would this server resume it, and why?

:func:`inspect_ticket` is pure (ring and ``now`` passed in) and follows the
order in which OpenSSL's ``tls_decrypt_ticket`` (ssl/t1_lib.c) and stek's
callback decide:

1. fewer than 32 bytes (key name + IV): OpenSSL never calls the callback;
2. the key name is looked up in the ring: unknown -> full handshake;
3. the key's state at ``now`` (:data:`stek.schedule.LIFECYCLE`): expired ->
   full handshake; decrypt-only -> resume and renew; pending or active ->
   resume;
4. length, MAC (constant time), padding: any failure -> full handshake;
5. the decrypted state must be one ``SSL_SESSION`` (:mod:`stek.session`),
   the session must not have outlived its own timeout, nor ``accept_for``
   since the full handshake that created it (stek's ticket appdata);
6. when the server's session id context is given: the session's must be the
   same, or OpenSSL treats it as a cache miss (``ssl_get_prev_session`` in
   ssl/ssl_sess.c for TLS 1.2, ``tls_parse_ctos_psk`` for TLS 1.3; checked
   before the timeout, and measured against nginx, HAProxy and Python).

:func:`ticket_of` and :func:`session_of` read a Python ``ssl.SSLSession``
through the libssl binding; they are the only part of this module that
touches the binding, and they import it lazily.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import session as sessions
from .compat import HAPROXY_SESSION_ID_CONTEXT, PYTHON_SESSION_ID_CONTEXT
from .errors import InvalidTicket
from .inspect_input import Kind, recognize
from .keyring import Keyring
from .keys import NAME_LEN, TicketKey
from .schedule import LIFECYCLE, Answer, State, decrypt_answer, state_of
from .session import SessionInfo
from .ticket import STATE_OFFSET, open_parts, parse

if TYPE_CHECKING:
    import ssl


class Verdict(enum.Enum):
    """What the server does with the ticket."""

    RESUME = "resume"
    RESUME_AND_RENEW = "resume and renew"
    FULL_HANDSHAKE = "full handshake"

    @property
    def resumes(self) -> bool:
        return self is not Verdict.FULL_HANDSHAKE


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class Inspection:
    """The verdict on one ticket, and everything that led to it (no key bytes)."""

    now: float
    ticket_len: int
    key_name: bytes | None
    key: TicketKey | None
    key_state: State | None
    verdict: Verdict
    reason: str
    #: The callback's answer for this session's protocol (1 or 2; 0 when rejected).
    answer: Answer
    #: The decrypted ticket state (None unless the ticket opened).
    session: SessionInfo | None = None
    #: The client's own session, when the input was a client session file.
    client_session: SessionInfo | None = None
    #: The session id context of the server asked about (None: not checked).
    server_sid_ctx: bytes | None = None

    @property
    def resumes(self) -> bool:
        return self.verdict.resumes

    def to_dict(self) -> dict[str, Any]:
        key: dict[str, Any] | None = None
        if self.key is not None:
            key = {
                "name": self.key.name.hex(),
                "state": self.key_state.value if self.key_state else None,
                "size": self.key.size,
                "activates_at": iso(self.key.activates_at),
                "retires_at": iso(self.key.retires_at),
                "expires_at": iso(self.key.expires_at),
            }
        return {
            "now": iso(self.now),
            "ticket_len": self.ticket_len,
            "key_name": self.key_name.hex() if self.key_name is not None else None,
            "key": key,
            "verdict": self.verdict.value,
            "resumes": self.resumes,
            "reason": self.reason,
            "callback_answer": int(self.answer),
            "session": self.session.to_dict() if self.session else None,
            "client_session": self.client_session.to_dict() if self.client_session else None,
            "session_id_context": (describe_sid_ctx(self.session.sid_ctx)
                                   if self.session else None),
            "server_session_id_context": (describe_sid_ctx(self.server_sid_ctx)
                                          if self.server_sid_ctx is not None else None),
        }


#: OpenSSL's SSL_MAX_SID_CTX_LENGTH (include/openssl/ssl.h).
MAX_SID_CTX_LEN = 32
_KNOWN_SID_CTX = {
    PYTHON_SESSION_ID_CONTEXT: "Python's ssl",
    HAPROXY_SESSION_ID_CONTEXT: "HAProxy",
}


def describe_sid_ctx(sid_ctx: bytes) -> dict[str, Any]:
    """A session id context as hex, with whose it is when stek knows it."""
    server = _KNOWN_SID_CTX.get(sid_ctx)
    if server is None and len(sid_ctx) == 20:
        # ngx_ssl_session_id_context (src/event/ngx_event_openssl.c): SHA-1.
        server = "SHA-1 sized: nginx's is a SHA-1 over its certificates"
    return {"hex": sid_ctx.hex(), "len": len(sid_ctx), "server": server}


def sid_ctx_label(sid_ctx: bytes) -> str:
    """One line for humans: ``50797468...00 (7 bytes, Python's ssl)``."""
    d = describe_sid_ctx(sid_ctx)
    if not sid_ctx:
        return "none (empty)"
    return f"{d['hex']} ({d['len']} bytes{', ' + d['server'] if d['server'] else ''})"


def inspect_ticket(ticket: bytes, ring: Keyring, now: float, *,
                   client_session: SessionInfo | None = None,
                   tls13: bool | None = None,
                   sid_ctx: bytes | None = None) -> Inspection:
    """The server's verdict on ``ticket`` at ``now`` with the keys of ``ring``.

    ``sid_ctx`` is the session id context of the server asked about
    (:mod:`stek.compat`): a session made under another never resumes there.
    ``tls13`` selects the callback answer when the protocol cannot be read
    from the ticket itself (it is otherwise taken from the decrypted session,
    or from ``client_session``).
    """
    data = bytes(ticket)
    if tls13 is None and client_session is not None:
        tls13 = client_session.tls13

    def verdict(v: Verdict, reason: str, *, key: TicketKey | None = None,
                st: State | None = None, answer: Answer = Answer.NO_TICKET,
                session: SessionInfo | None = None) -> Inspection:
        return Inspection(now, len(data), name, key, st, v, reason, answer, session,
                          client_session, sid_ctx)

    # tls_decrypt_ticket: "Need at least keyname + iv" before the callback runs.
    name = data[:NAME_LEN] if len(data) >= NAME_LEN else None
    if len(data) < STATE_OFFSET:
        return verdict(Verdict.FULL_HANDSHAKE,
                       f"malformed: {len(data)} bytes, shorter than key name + IV "
                       f"({STATE_OFFSET}); OpenSSL does not even ask for a key")
    assert name is not None
    key = ring.find(name)
    if key is None:
        return verdict(Verdict.FULL_HANDSHAKE,
                       f"unknown key: no key named {name.hex()} in the ring (dropped, or "
                       f"issued under another ring)")
    st = state_of(key, now)
    if st is State.EXPIRED:
        return verdict(Verdict.FULL_HANDSHAKE,
                       f"expired at {iso(key.expires_at)}: key {name.hex()} no longer "
                       f"decrypts", key=key, st=st)
    try:
        state = open_parts(parse(data), key)
        info = sessions.decode(state)
    except InvalidTicket as exc:
        return verdict(Verdict.FULL_HANDSHAKE, exc.reason, key=key, st=st)
    if sid_ctx is not None and info.sid_ctx != sid_ctx:
        # ssl_get_prev_session: "we don't want to use it in this context",
        # treated as a cache miss although the key opened the ticket.
        return verdict(Verdict.FULL_HANDSHAKE,
                       f"session id context: the session was made under "
                       f"{sid_ctx_label(info.sid_ctx)}, this server's is "
                       f"{sid_ctx_label(sid_ctx)}; OpenSSL resumes a session only in "
                       f"the context it was made in, although key {name.hex()} is "
                       f"{st.value}", key=key, st=st, session=info)
    if info.timeout and now >= info.expires_at:
        # ssl_get_prev_session (ssl/ssl_sess.c) refuses a session whose own
        # time + timeout has passed, whatever the ticket key says.
        return verdict(Verdict.FULL_HANDSHAKE,
                       f"session timed out at {iso(info.expires_at)} (its own "
                       f"{info.timeout}s timeout), although key {name.hex()} is {st.value}",
                       key=key, st=st, session=info)
    max_age = ring.policy.accept_for
    if now >= info.born_at + max_age:
        # stek's dec_cb (stek.schedule.decrypted_ticket_answer): renewals
        # never extend a session past accept_for after its full handshake.
        return verdict(Verdict.FULL_HANDSHAKE,
                       f"session too old: its full handshake was at {iso(info.born_at)}, "
                       f"more than accept_for ({max_age}s) ago, although key "
                       f"{name.hex()} is {st.value}",
                       key=key, st=st, session=info)
    answer = decrypt_answer(key, now, info.tls13 if tls13 is None else tls13)
    if LIFECYCLE[st].answer_tls12 is Answer.RENEW:
        return verdict(Verdict.RESUME_AND_RENEW,
                       f"key {name.hex()} is decrypt-only since {iso(key.retires_at)} "
                       f"(accepted until {iso(key.expires_at)}): the server resumes and "
                       f"re-issues the ticket under the active key",
                       key=key, st=st, answer=answer, session=info)
    when = (f"activates {iso(key.activates_at)}, published ahead" if st is State.PENDING
            else f"active until {iso(key.retires_at)}")
    return verdict(Verdict.RESUME, f"key {name.hex()} is {st.value} ({when})",
                   key=key, st=st, answer=answer, session=info)


@dataclass(frozen=True)
class TicketInput:
    """A ticket read from user input, and the client session around it if any."""

    ticket: bytes
    client_session: SessionInfo | None
    form: str  # a stek.inspect_input.Kind value: "session PEM", "session DER", "hex", "base64"


def read_input(data: bytes) -> TicketInput:
    """Parse ``stek inspect``'s INPUT (:func:`stek.inspect_input.recognize`).

    Raises :class:`InvalidTicket` saying what the input is not, or that a
    session holds no ticket.
    """
    found = recognize(data)
    if not found.kind.is_session:
        return TicketInput(found.payload, None, found.kind.value)
    info = sessions.decode(found.payload)
    tick = sessions.ticket(found.payload)
    if not tick:
        raise InvalidTicket(
            "this session holds no ticket (the server issued none, or it was a "
            "session-ID resumption)"
        )
    return TicketInput(tick, info, found.kind.value)


def read_ticket(text: str) -> TicketInput:
    """:func:`read_input` for text: an s_client ``-sess_out`` PEM, hex or base64."""
    return read_input(text.encode("utf-8", "surrogateescape"))


# -- Python ssl.SSLSession: through the libssl binding (adapter, not core) -------

def ticket_of(session: ssl.SSLSession) -> bytes | None:
    """The ticket a Python client holds in ``session`` (None if the server sent none).

    Reads ``SSL_SESSION_get0_ticket`` through :mod:`stek.hazmat.libssl`;
    raises :class:`~stek.errors.BindingError` when that libssl cannot be reached.
    """
    from .hazmat.libssl import libssl

    return libssl().session_ticket(session) or None


def session_of(session: ssl.SSLSession) -> SessionInfo:
    """Decode a Python client's ``ssl.SSLSession`` (``i2d_SSL_SESSION``), without secrets."""
    from .hazmat.libssl import libssl

    return sessions.decode(libssl().session_der(session))


def inspect_session(session: ssl.SSLSession, ring: Keyring,
                    now: float | None = None) -> Inspection:
    """Would a server holding ``ring`` resume this Python client session?"""
    tick = ticket_of(session)
    info = session_of(session)
    if tick is None:
        raise InvalidTicket("this session holds no ticket")
    return inspect_ticket(tick, ring, time.time() if now is None else now,
                          client_session=info)


__all__ = [
    "Inspection",
    "Kind",
    "TicketInput",
    "Verdict",
    "describe_sid_ctx",
    "inspect_session",
    "inspect_ticket",
    "read_input",
    "read_ticket",
    "session_of",
    "sid_ctx_label",
    "ticket_of",
]
