"""The TLS client behind ``stek probe``: one handshake, and what the client saw.

This is the probe's only I/O.  Everything it reports comes from the client
side of a real handshake made with Python's ``ssl``:

* reuse: ``SSLSocket.session_reused``;
* the lifetime hint: ``SSLSession.ticket_lifetime_hint`` (RFC 5077 section
  3.3; RFC 8446 section 4.6.1 ``ticket_lifetime``);
* the ticket bytes: ``SSL_SESSION_get0_ticket`` through
  :func:`stek.inspect.ticket_of` (the binding's one reader of client sessions);
* how many NewSessionTicket messages arrived: ``SSLContext._msg_callback``
  (CPython's message hook, ``SSL_CTX_set_msg_callback(3)``), which sees each
  handshake message after decryption, so TLS 1.3 tickets are counted too.

Whatever the server does (garbage, resets, silence, a certificate that does
not verify), :meth:`TLSConnector.handshake` raises :class:`ProbeConnectionError`
and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import StekError

#: RFC 8446 section 4 / RFC 5077 section 3.3: HandshakeType new_session_ticket(4).
NEW_SESSION_TICKET = 4
#: After the first TLS 1.3 ticket, how long to wait for more (a server sends
#: its tickets back to back: OpenSSL two by default, SSL_CTX_set_num_tickets(3)).
QUIET = 0.2

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: OpenSSL reasons meaning "not this TLS version": the server's protocol_version
#: alert (RFC 8446 section 6.2, RFC 5246 section 7.2.2), or the client's own
#: refusal of the version the server chose (ssl_choose_client_version in
#: ssl/statem/statem_lib.c: UNSUPPORTED_PROTOCOL; WRONG_SSL_VERSION for a
#: record of another version).
VERSION_REFUSED = frozenset({"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL",
                             "WRONG_SSL_VERSION"})


class ProbeError(StekError):
    """``stek probe`` could not do what it was asked (exit status 2)."""


class ProbeConnectionError(ProbeError):
    """A connection or handshake with an endpoint failed."""


@dataclass(frozen=True)
class Target:
    """One ``host:port`` endpoint of the service."""

    host: str
    port: int

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """``host:port`` or ``[v6]:port``; raises :class:`ProbeError` otherwise."""
        host, sep, port = text.strip().rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ProbeError(f"target {text!r} is not host:port")
        return cls(host, int(port))


@dataclass(frozen=True)
class Handshake:
    """What the client saw in one handshake (no secrets)."""

    tls: str  # "1.2" or "1.3"
    reused: bool
    cipher: str
    #: NewSessionTicket messages received (TLS 1.2: 0 or 1).
    tickets: int
    #: The ticket the client now holds (b"" if none).
    ticket: bytes
    lifetime_hint: int
    #: SHA-256 of the server's certificate (DER), hex.
    certificate: str
    session: Any = None  # the ssl.SSLSession, to offer elsewhere


class Connector(Protocol):
    def handshake(self, target: Target, tls: str, session: Any = None, *,
                  want_tickets: bool = True) -> Handshake: ...


class TLSConnector:
    """Real handshakes with Python's ``ssl`` (one client context per TLS version,
    since a session can only be offered through the context that made it)."""

    def __init__(self, *, sni: str | None = None, cafile: str | None = None,
                 timeout: float = 5.0, ticket_wait: float = 1.0) -> None:
        self.sni = sni
        self.timeout = timeout
        self.ticket_wait = ticket_wait
        self._counts: dict[int, int] = {}
        self._contexts = {tls: self._context(v, cafile) for tls, v in TLS_VERSIONS.items()}

    def _context(self, version: ssl.TLSVersion, cafile: str | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cafile is not None:
            try:
                ctx.load_verify_locations(cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ProbeError(f"cannot read --cafile {cafile}: {exc}") from exc
        else:
            # The probe sends nothing secret; it reports what servers do with tickets.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ctx.maximum_version = version
        counts = self._counts

        def on_message(conn: Any, direction: str, version: Any, content_type: Any,
                       msg_type: Any, data: bytes) -> None:
            if direction == "read" and msg_type == NEW_SESSION_TICKET and \
                    content_type == 22:  # handshake(22), RFC 8446 section 5.1
                counts[id(conn)] = counts.get(id(conn), 0) + 1

        with contextlib.suppress(AttributeError):  # a Python without the hook: count 0/1
            ctx._msg_callback = on_message  # type: ignore[attr-defined]
        return ctx

    def _server_hostname(self, target: Target) -> str:
        # An IP literal is checked against the certificate's IP addresses
        # (--cafile) and never sent as SNI: CPython's ssl omits it, as RFC 6066
        # section 3 asks ("Literal IPv4 and IPv6 addresses are not permitted").
        return self.sni if self.sni is not None else target.host

    def handshake(self, target: Target, tls: str, session: Any = None, *,
                  want_tickets: bool = True) -> Handshake:
        what = f"{target.label} TLS {tls}" + (" (resuming)" if session is not None else "")
        try:
            return self._handshake(target, tls, session, want_tickets)
        except ssl.SSLCertVerificationError as exc:
            raise ProbeConnectionError(f"{what}: certificate: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            if exc.reason not in VERSION_REFUSED:
                raise ProbeConnectionError(f"{what}: {exc.reason or exc}") from exc
            others = " or ".join(f"--tls {v}" for v in TLS_VERSIONS if v != tls)
            raise ProbeConnectionError(
                f"{target.label} refuses TLS {tls} ({exc.reason}): probe only the versions "
                f"it accepts ({others})") from exc
        except (OSError, ValueError, UnicodeError, StekError) as exc:
            # ssl.SSLError, TimeoutError and ConnectionError are OSErrors.
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise ProbeConnectionError(f"{what}: {reason}") from exc

    def _handshake(self, target: Target, tls: str, session: Any,
                   want_tickets: bool) -> Handshake:
        from .inspect import ticket_of  # the binding, loaded lazily

        ctx = self._contexts[tls]
        self._counts.clear()  # one handshake at a time; the hook keys by socket
        with socket.create_connection((target.host, target.port), timeout=self.timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=self._server_hostname(target),
                                session=session) as conn:
            # The hook is called with the SSLSocket (CPython _ssl.c _PySSL_msg_callback).
            if want_tickets and tls == "1.3":
                self._read_tickets(conn, id(conn))
            sess = conn.session
            reused = conn.session_reused
            cipher = (conn.cipher() or ("?",))[0]
            der = conn.getpeercert(binary_form=True) or b""
            count = self._counts.get(id(conn), 0)
        ticket = (ticket_of(sess) or b"") if sess is not None and sess.has_ticket else b""
        if tls == "1.2" and ticket and not count:
            count = 1  # a Python without the message hook
        return Handshake(tls=tls, reused=bool(reused), cipher=str(cipher), tickets=count,
                         ticket=ticket,
                         lifetime_hint=int(sess.ticket_lifetime_hint) if sess else 0,
                         certificate=hashlib.sha256(der).hexdigest(), session=sess)

    def _read_tickets(self, conn: ssl.SSLSocket, key: int) -> None:
        """TLS 1.3 tickets follow the handshake (RFC 8446 section 4.6.1): read until
        they stop coming, the server closes, or ``ticket_wait`` runs out."""
        deadline = time.monotonic() + self.ticket_wait
        while True:
            left = deadline - time.monotonic()
            if self._counts.get(key, 0):
                left = min(left, QUIET)
            if left <= 0:
                return
            conn.settimeout(left)
            before = self._counts.get(key, 0)
            try:
                if not conn.recv(16384):
                    return  # closed
            except TimeoutError:
                if self._counts.get(key, 0) == before:
                    return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
                return
