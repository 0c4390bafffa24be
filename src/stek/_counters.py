"""What an installation's ticket callback did: :class:`Counters`, the names the
Python callback counts under and the order in which the compiled one
reports them (``stek/hazmat/_fastcb.c``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Counters:
    """What the callback did since install (a consistent copy)."""

    issued: int = 0  # enc=1 answered 1: a ticket was sealed under the active key
    # A presented ticket resumed the session: OpenSSL checked its MAC and
    # decrypted it (SSL_CTX_set_session_ticket_cb(3) dec_cb, SSL_TICKET_SUCCESS*),
    # the session is younger than accept_for, and it was made in this
    # connection's session id context (else OpenSSL refuses it right after).
    resumed: int = 0
    renewed: int = 0  # resumed, and a new ticket follows (TLS 1.3; decrypt-only keys)
    rejected_unknown: int = 0  # enc=0: no key has that name
    rejected_expired: int = 0  # enc=0: the key exists but expired
    no_active_key: int = 0  # enc=1 answered 0: nothing active, no ticket issued
    errors: int = 0  # a Python exception or an OpenSSL failure inside the callback
    # A valid ticket refused because its session's full handshake is more than
    # accept_for ago (renewals never extend a session: s2n #5147).
    rejected_too_old: int = 0
    # enc=0 answered 1 or 2: the ticket names a key inside its window.  The key
    # callback runs before OpenSSL checks the MAC, so a forged ticket under a
    # live key's name counts here (and not in ``resumed``).
    accepted_by_name: int = 0
    # A valid ticket whose session has no client certificate, presented to a
    # connection that requires one (CERT_REQUIRED): a full handshake instead,
    # which asks for the certificate (docs/trust.md).
    rejected_no_peer_cert: int = 0
    # A valid ticket whose session was made for another server name than the
    # one the client asks for now (RFC 6066 section 3; docs/trust.md).
    rejected_other_name: int = 0


_FIELDS = tuple(Counters.__dataclass_fields__)
