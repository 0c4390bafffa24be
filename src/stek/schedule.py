"""The key lifecycle and the callback's decision table, as data (sans-IO).

Everything that decides what OpenSSL's ticket-key callback answers lives in
this file.  ``SSL_CTX_set_tlsext_ticket_key_cb(3)`` defines the answers:

* ``1``: "ctx and hctx have been set and the session can continue on those
  parameters" (enc=1: a ticket is issued; enc=0: the ticket is accepted);
* ``2``: enc=0 only, accepted *and* "the session ticket is in a renewal
  period and should be replaced": OpenSSL calls back with enc=1 for a new
  ticket (RFC 5077 section 3.3, paragraph 2);
* ``0``: "it was not possible to set/retrieve a session ticket": enc=1 issues
  no ticket, enc=0 falls back to a full handshake;
* ``< 0``: an error: OpenSSL aborts the handshake.  stek answers -1 only when
  OpenSSL itself fails (RAND_bytes, EVP init), as the man page says.

A key's state at instant ``now`` (Unix seconds):

==============  ===================================  ======  =================
state           when                                 enc=1   enc=0 (TLS1.2/1.3)
==============  ===================================  ======  =================
pending         now < activates_at                   never   1 / 2
active          activates_at <= now < retires_at     1       1 / 2
decrypt-only    retires_at <= now < expires_at       never   2 / 2
expired         expires_at <= now (or unknown name)  never   0 / 0
==============  ===================================  ======  =================

Pending keys are accepted because they were published ahead and another
host's clock may be ahead of ours.  TLS 1.3 resumptions always answer 2 so a
fresh ticket is issued each time (nginx ticket #1892: answering 1 under TLS
1.3 never re-issues tickets).
"""

from __future__ import annotations

import enum
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ._duration import format_duration
from .errors import ConfigError, KeyringError
from .keys import SIZES, Random, TicketKey, generate_key

#: RFC 8446 section 4.6.1: "Servers MUST NOT use any value greater than 604800
#: seconds (7 days)" for ticket_lifetime.  No ticket outlives that in stek.
MAX_ACCEPT_WINDOW = 7 * 86400
#: Above this total window stek warns: common guidance is 24h-48h of exposure.
WARN_ACCEPT_WINDOW = 48 * 3600
#: Hard bound on keys in one ring; the schedule must fit well inside it.
MAX_KEYS = 64
#: Clock difference between hosts tolerated when a reader checks how far
#: ahead a key activates: the writer planned with its clock, the reader
#: checks with its own (see :func:`check_windows`).
MAX_CLOCK_SKEW = 300
#: Latest instant a key may carry: 9999-12-31T23:59:59Z, the end of the range
#: ``time.gmtime`` renders, far inside the C callback's 64-bit ``time_t``.
MAX_INSTANT = 253_402_300_799


class StekWarning(UserWarning):
    """A configuration stek accepts but advises against."""


class State(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    DECRYPT_ONLY = "decrypt-only"
    EXPIRED = "expired"


class Answer(enum.IntEnum):
    """Return values of the ticket-key callback (SSL_CTX_set_tlsext_ticket_key_cb(3))."""

    ERROR = -1
    NO_TICKET = 0  # enc=1: issue none; enc=0: full handshake
    OK = 1
    RENEW = 2  # enc=0 only: accept and re-issue


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the lifecycle table."""

    state: State
    encrypts: bool
    answer_tls12: Answer
    answer_tls13: Answer


#: The lifecycle table.  Docs and ``stek status`` are drawn from it.
LIFECYCLE: dict[State, Row] = {
    State.PENDING: Row(State.PENDING, False, Answer.OK, Answer.RENEW),
    State.ACTIVE: Row(State.ACTIVE, True, Answer.OK, Answer.RENEW),
    State.DECRYPT_ONLY: Row(State.DECRYPT_ONLY, False, Answer.RENEW, Answer.RENEW),
    State.EXPIRED: Row(State.EXPIRED, False, Answer.NO_TICKET, Answer.NO_TICKET),
}


class Windowed(Protocol):
    """Anything with a key's three instants (TicketKey, or its C-ready twin)."""

    @property
    def activates_at(self) -> int: ...
    @property
    def retires_at(self) -> int: ...
    @property
    def expires_at(self) -> int: ...


W = TypeVar("W", bound=Windowed)


def state_of(key: Windowed, now: float) -> State:
    if now < key.activates_at:
        return State.PENDING
    if now < key.retires_at:
        return State.ACTIVE
    if now < key.expires_at:
        return State.DECRYPT_ONLY
    return State.EXPIRED


def decrypt_answer(key: Windowed | None, now: float, tls13: bool) -> Answer:
    """enc=0: what to answer for a ticket whose name matched ``key`` (or nothing)."""
    if key is None:
        return Answer.NO_TICKET
    row = LIFECYCLE[state_of(key, now)]
    return row.answer_tls13 if tls13 else row.answer_tls12


def encrypting_key(keys: Iterable[W], now: float) -> W | None:
    """enc=1: the newest active key (largest activates_at), or None: issue no ticket."""
    best: W | None = None
    for k in keys:
        if k.activates_at <= now < k.retires_at and (
            best is None or k.activates_at > best.activates_at
        ):
            best = k
    return best


class TicketStatus(enum.IntEnum):
    """``SSL_TICKET_STATUS`` handed to the decrypted-ticket callback
    (SSL_CTX_set_session_ticket_cb(3), openssl/ssl.h)."""

    FATAL_ERR_MALLOC = 0
    FATAL_ERR_OTHER = 1
    NONE = 2
    EMPTY = 3
    NO_DECRYPT = 4
    SUCCESS = 5
    SUCCESS_RENEW = 6


class TicketReturn(enum.IntEnum):
    """``SSL_TICKET_RETURN``: what OpenSSL does with a decrypted ticket."""

    ABORT = 0
    IGNORE = 1
    IGNORE_RENEW = 2  # full handshake, then a new ticket
    USE = 3
    USE_RENEW = 4  # resume, then a new ticket


#: After the key callback (above) and OpenSSL's MAC check, OpenSSL reports
#: what happened; this is the man page's recommended mapping, which stek
#: keeps except for one rule: see :func:`decrypted_ticket_answer`.
DECRYPTED_TICKET: dict[TicketStatus, TicketReturn] = {
    TicketStatus.FATAL_ERR_MALLOC: TicketReturn.ABORT,
    TicketStatus.FATAL_ERR_OTHER: TicketReturn.ABORT,
    TicketStatus.NONE: TicketReturn.IGNORE_RENEW,
    TicketStatus.EMPTY: TicketReturn.IGNORE_RENEW,
    TicketStatus.NO_DECRYPT: TicketReturn.IGNORE_RENEW,
    TicketStatus.SUCCESS: TicketReturn.USE,
    TicketStatus.SUCCESS_RENEW: TicketReturn.USE_RENEW,
}


def decrypted_ticket_answer(status: int, born_at: float, now: float,
                            max_age: int) -> TicketReturn:
    """What to do with a ticket OpenSSL has decrypted.

    A session may not outlive ``max_age`` seconds after the full handshake
    that created it, however often its ticket was renewed.  OpenSSL keeps a
    TLS 1.2 session's creation time across renewals, but gives every TLS 1.3
    ticket a fresh one, so without this rule a TLS 1.3 client resuming often
    enough could keep one resumption secret alive for ever (RFC 8446 section
    4.6.1 recommends a limit; s2n #5147).  ``born_at`` is the full
    handshake's instant, carried in the ticket.
    """
    try:
        answer = DECRYPTED_TICKET[TicketStatus(status)]
    except ValueError:  # a status this stek does not know: no resumption
        answer = TicketReturn.IGNORE_RENEW
    if answer in (TicketReturn.USE, TicketReturn.USE_RENEW) and now >= born_at + max_age:
        return TicketReturn.IGNORE_RENEW
    return answer


@dataclass(frozen=True, slots=True)
class Policy:
    """How often keys rotate and how long their tickets stay good (seconds).

    * ``rotate_every``: how long a key encrypts (its active window);
    * ``accept_for``: how long after retiring it still decrypts;
    * ``publish_ahead``: how long before activation a key is published, so
      that every server (and every exported file) holds it before anyone
      encrypts with it;
    * ``key_size``: 80 (AES-256, default) or 48 (AES-128).

    A ticket is accepted at most ``rotate_every + accept_for`` after issue:
    that sum is the forward-secrecy window.
    """

    rotate_every: int = 3600
    accept_for: int = 11 * 3600
    publish_ahead: int = 600
    key_size: int = 80
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for label, value in (
            ("rotate_every", self.rotate_every),
            ("accept_for", self.accept_for),
            ("publish_ahead", self.publish_ahead),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{label} must be a positive number of seconds, got {value!r}")
        if self.key_size not in SIZES:
            raise ConfigError(f"key_size must be 80 or 48, got {self.key_size!r}")
        window = self.window
        if window > MAX_ACCEPT_WINDOW:
            raise ConfigError(
                f"rotate_every + accept_for is {format_duration(window)}: a ticket may not be "
                f"accepted longer than 7d (RFC 8446 section 4.6.1)"
            )
        if self.max_keys > MAX_KEYS:
            raise ConfigError(
                f"this schedule keeps up to {self.max_keys} keys at once (more than {MAX_KEYS}): "
                f"rotate less often or accept for less time"
            )
        notes = []
        if window > WARN_ACCEPT_WINDOW:
            notes.append(
                f"tickets stay valid for up to {format_duration(window)}: more than 48h weakens "
                f"forward secrecy"
            )
        if self.key_size == 48:
            notes.append(
                "48-byte keys (AES-128) cap the security of every resumed session at 128 bits, "
                "whatever the cipher suite"
            )
        object.__setattr__(self, "warnings", tuple(notes))

    @property
    def window(self) -> int:
        """The longest time a ticket can be accepted after it is issued."""
        return self.rotate_every + self.accept_for

    @property
    def max_keys(self) -> int:
        """Upper bound on keys alive at once under this policy."""
        return math.ceil((self.publish_ahead + self.rotate_every + self.accept_for)
                         / self.rotate_every) + 1

    def warn(self) -> None:
        for note in self.warnings:
            warnings.warn(note, StekWarning, stacklevel=3)

    def to_dict(self) -> dict[str, int]:
        return {
            "rotate_every": self.rotate_every,
            "accept_for": self.accept_for,
            "publish_ahead": self.publish_ahead,
            "key_size": self.key_size,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rotation changes: keys to add and names to drop."""

    add: tuple[TicketKey, ...] = ()
    drop: tuple[bytes, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.add and not self.drop


def plan(
    keys: Sequence[TicketKey], policy: Policy, now: float, random: Random | None = None
) -> Plan:
    """Keys to add and drop so the ring is right for ``now`` (pure; randomness injected).

    * Drop every key whose ``expires_at <= now``: past the accept window a
      key is useless and keeping it only weakens forward secrecy.
    * Make sure some key is active from ``now`` until ``now + publish_ahead``
      with no gap.  New keys start where the last active window ends (or at
      ``now`` if nothing is active), and end on the next multiple of
      ``rotate_every`` since the Unix epoch.  Slots are therefore the same on
      every host, and two rotators racing on one ring intend the same key for
      the same slot: the store's atomic update lets only one of them write it.
    """
    rand = random if random is not None else os.urandom
    drop = tuple(k.name for k in keys if k.expires_at <= now)
    live = [k for k in keys if k.expires_at > now]
    add: list[TicketKey] = []
    # ``now`` may carry a fraction: the horizon keeps it (so publish_ahead is
    # never cut short), key instants are whole seconds (floor, so a gap key
    # is active at once).
    horizon = now + policy.publish_ahead
    cursor = int(now)
    while cursor <= horizon:
        covering = [k for k in (*live, *add) if k.activates_at <= cursor < k.retires_at]
        if covering:
            cursor = max(k.retires_at for k in covering)
            continue
        # Next slot boundary strictly after cursor (epoch-aligned).
        retires = (cursor // policy.rotate_every + 1) * policy.rotate_every
        add.append(
            generate_key(
                size=policy.key_size,
                activates_at=cursor,
                retires_at=retires,
                expires_at=retires + policy.accept_for,
                random=rand,
            )
        )
        cursor = retires
    return Plan(add=tuple(add), drop=drop)


def check_windows(keys: Iterable[Windowed], policy: Policy, now: float | None = None) -> None:
    """Refuse keys whose windows exceed what ``policy`` lets :func:`plan` make.

    :func:`plan` never makes a key active longer than ``rotate_every``,
    accepted longer than ``accept_for`` after it retires, or activating more
    than ``publish_ahead`` after ``now``.  A reader holds every key it loads
    to the same bounds (plus :data:`MAX_CLOCK_SKEW` for the ahead check), so
    whoever can write a ring cannot plant a key that outlives its policy.
    ``now=None`` skips the ahead check (it needs a clock).
    Raises :class:`~stek.errors.KeyringError` naming the key by its public name.
    """
    for k in keys:
        name = getattr(k, "name", b"")
        label = f"key {name.hex()}" if isinstance(name, bytes) else "key"
        active, accepted = k.retires_at - k.activates_at, k.expires_at - k.retires_at
        if active > policy.rotate_every:
            raise KeyringError(
                f"{label} is active for {format_duration(active)}, longer than the policy's "
                f"rotate_every ({format_duration(policy.rotate_every)})"
            )
        if accepted > policy.accept_for:
            raise KeyringError(
                f"{label} is accepted for {format_duration(accepted)} after retiring, longer "
                f"than the policy's accept_for ({format_duration(policy.accept_for)})"
            )
        if now is not None and k.activates_at > now + policy.publish_ahead + MAX_CLOCK_SKEW:
            ahead = int(k.activates_at - now)
            raise KeyringError(
                f"{label} activates {format_duration(ahead)} from now, further ahead than the "
                f"policy's publish_ahead ({format_duration(policy.publish_ahead)})"
            )


def next_change(keys: Sequence[Windowed], policy: Policy, now: float) -> float:
    """The earliest instant at which :func:`plan` would change the ring.

    That is the first expiry, or the moment the end of the covered active
    windows comes within ``publish_ahead``; ``now`` if a change is due already.
    """
    due: list[float] = [k.expires_at for k in keys]
    cursor = now
    while True:
        covering = [k for k in keys if k.activates_at <= cursor < k.retires_at]
        if not covering:
            break
        cursor = max(k.retires_at for k in covering)
    due.append(cursor - policy.publish_ahead)
    return max(now, min(due))
