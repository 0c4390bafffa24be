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
   since the full handshake that created it (stek's ticket appdata).

:func:`ticket_of` and :func:`session_of` read a Python ``ssl.SSLSession``
through the libssl binding; they are the only part of this module that
touches the binding, and they import it lazily.
"""

from __future__ import annotations

import base64
import binascii
import enum
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import session as sessions
from .errors import InvalidTicket
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
        }


def inspect_ticket(ticket: bytes, ring: Keyring, now: float, *,
                   client_session: SessionInfo | None = None,
                   tls13: bool | None = None) -> Inspection:
    """The server's verdict on ``ticket`` at ``now`` with the keys of ``ring``.

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
                          client_session)

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
    form: str  # "session PEM", "hex", "base64"


def read_ticket(text: str) -> TicketInput:
    """Parse ``stek inspect``'s INPUT: an s_client ``-sess_out`` PEM, hex or base64.

    Raises :class:`InvalidTicket` when the text is none of these, or a
    session file without a ticket.
    """
    if sessions.is_pem(text):
        der = sessions.from_pem(text)
        info = sessions.decode(der)
        tick = sessions.ticket(der)
        if not tick:
            raise InvalidTicket(
                "this session holds no ticket (the server issued none, or it was a "
                "session-ID resumption)"
            )
        return TicketInput(tick, info, "session PEM")
    compact = "".join(text.split())
    if not compact:
        raise InvalidTicket("empty input: expected a session PEM, hex or base64")
    if len(compact) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in compact):
        return TicketInput(bytes.fromhex(compact), None, "hex")
    try:
        padded = compact + "=" * (-len(compact) % 4)
        if "-" in compact or "_" in compact:
            raw = base64.urlsafe_b64decode(padded)
        else:
            raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidTicket(
            "input is neither an 'SSL SESSION PARAMETERS' PEM block, nor hex, nor base64"
        ) from None
    return TicketInput(raw, None, "base64")


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
    "TicketInput",
    "Verdict",
    "inspect_session",
    "inspect_ticket",
    "read_ticket",
    "session_of",
    "ticket_of",
]
