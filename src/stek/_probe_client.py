"""The TLS client behind ``stek probe``: one handshake, and what the client saw.

This is the probe's only I/O.  Everything it reports comes from the client
side of a real handshake made with Python's ``ssl``:

* reuse: ``SSLSocket.session_reused``;
* the lifetime hint: ``SSLSession.ticket_lifetime_hint`` (RFC 5077 section
  3.3; RFC 8446 section 4.6.1 ``ticket_lifetime``);
* the ticket bytes: ``SSL_SESSION_get0_ticket`` through
  :func:`stek.inspection.ticket_of` (the binding's one reader of client sessions);
* how many NewSessionTicket messages arrived: ``SSLContext._msg_callback``
  (CPython's message hook, ``SSL_CTX_set_msg_callback(3)``), which sees each
  handshake message after decryption, so TLS 1.3 tickets are counted too.

* whether the server asked for a client certificate: a CertificateRequest
  (RFC 8446 section 4.3.2, RFC 5246 section 7.4.4) seen by the same hook; a
  handshake that then fails while the client sent none is an endpoint that
  *requires* one, a measured fact and not an error.

Whatever else the server does (garbage, resets, silence, a certificate that
does not verify), :meth:`TLSConnector.handshake` raises
:class:`ProbeConnectionError` and nothing else; its ``kind`` says which.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ProbeError as ProbeError  # its home; re-exported for old imports
from .errors import StekError

#: RFC 8446 section 4 / RFC 5077 section 3.3: HandshakeType new_session_ticket(4).
NEW_SESSION_TICKET = 4
#: RFC 8446 section 4 / RFC 5246 section 7.4: HandshakeType certificate_request(13).
CERTIFICATE_REQUEST = 13
#: RFC 8446 section 5.1: ContentType alert(21), handshake(22).
ALERT, HANDSHAKE = 21, 22
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


#: What a failed handshake says about its endpoint (the probe's diagnosis kinds).
UNREACHABLE = "unreachable"  # nothing listens, or no TLS server answered
VERSION_REFUSED_KIND = "version-refused"
HANDSHAKE_FAILED = "handshake-failed"  # a TLS server answered, then the handshake failed


class ProbeConnectionError(ProbeError):
    """A connection or handshake with an endpoint failed."""

    def __init__(self, message: str, kind: str = HANDSHAKE_FAILED) -> None:
        super().__init__(message)
        self.kind = kind


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
    #: SHA-256 of the server's certificate (DER), hex ("" if the handshake failed first).
    certificate: str
    session: Any = None  # the ssl.SSLSession, to offer elsewhere
    #: The server sent a CertificateRequest.
    cert_requested: bool = False
    #: ... and the handshake failed because the client sent no certificate.
    cert_required: bool = False
    #: The client presented the operator's certificate (--cert/--key).
    cert_sent: bool = False


class Connector(Protocol):
    def handshake(self, target: Target, tls: str, session: Any = None, *,
                  want_tickets: bool = True, sni: str | None = None,
                  with_cert: bool = False) -> Handshake: ...


class TLSConnector:
    """Real handshakes with Python's ``ssl``: one client context per TLS version
    and per client identity (none, or --cert), since a session can only be
    offered through the context that made it (CPython ``_ssl.c``: "Session
    refers to a different SSLContext")."""

    def __init__(self, *, sni: str | None = None, cafile: str | None = None,
                 timeout: float = 5.0, ticket_wait: float = 1.0,
                 cert: tuple[str, str] | None = None) -> None:
        self.sni = sni
        self.timeout = timeout
        self.ticket_wait = ticket_wait
        #: (content type, handshake type) of every message read in the current
        #: handshake; one handshake at a time.
        self._read: list[tuple[int, int]] = []
        self._contexts = {(tls, False): self._context(v, cafile, None)
                          for tls, v in TLS_VERSIONS.items()}
        if cert is not None:
            self._contexts.update({(tls, True): self._context(v, cafile, cert)
                                   for tls, v in TLS_VERSIONS.items()})

    def _context(self, version: ssl.TLSVersion, cafile: str | None,
                 cert: tuple[str, str] | None) -> ssl.SSLContext:
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
        if cert is not None:
            try:
                ctx.load_cert_chain(*cert)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise ProbeError(f"cannot read --cert {cert[0]} / --key {cert[1]}: "
                                 f"{reason}") from exc
        ctx.minimum_version = ctx.maximum_version = version
        read = self._read

        def on_message(conn: Any, direction: str, version: Any, content_type: Any,
                       msg_type: Any, data: bytes) -> None:
            if direction == "read" and content_type in (ALERT, HANDSHAKE):
                read.append((int(content_type), int(msg_type)))

        with contextlib.suppress(AttributeError):  # a Python without the hook: count 0/1
            ctx._msg_callback = on_message  # type: ignore[attr-defined]
        return ctx

    def _server_hostname(self, target: Target, sni: str | None) -> str:
        # An IP literal is checked against the certificate's IP addresses
        # (--cafile) and never sent as SNI: CPython's ssl omits it, as RFC 6066
        # section 3 asks ("Literal IPv4 and IPv6 addresses are not permitted").
        if sni is not None:
            return sni
        return self.sni if self.sni is not None else target.host

    def _count(self, msg_type: int) -> int:
        return sum(1 for c, m in self._read if c == HANDSHAKE and m == msg_type)

    def _tls_answered(self) -> bool:
        return bool(self._read)

    def _refused_without_cert(self, with_cert: bool) -> bool:
        """The server asked for a certificate, the client had none, and it failed."""
        return not with_cert and self._count(CERTIFICATE_REQUEST) > 0

    def handshake(self, target: Target, tls: str, session: Any = None, *,
                  want_tickets: bool = True, sni: str | None = None,
                  with_cert: bool = False) -> Handshake:
        what = f"{target.label} TLS {tls}" + (" (resuming)" if session is not None else "")
        if (tls, with_cert) not in self._contexts:
            raise ProbeError("no client certificate: give --cert and --key")
        self._read.clear()
        try:
            return self._handshake(target, tls, session, want_tickets, sni, with_cert)
        except ssl.SSLCertVerificationError as exc:
            raise ProbeConnectionError(f"{what}: certificate: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            if self._refused_without_cert(with_cert):
                return self._required(tls, "", "")
            if not self._tls_answered():
                raise self._no_tls(what, exc) from exc
            if exc.reason in VERSION_REFUSED:
                others = " or ".join(f"--tls {v}" for v in TLS_VERSIONS if v != tls)
                raise ProbeConnectionError(
                    f"{target.label} refuses TLS {tls} ({exc.reason}): probe only the "
                    f"versions it accepts ({others})", VERSION_REFUSED_KIND) from exc
            if with_cert and self._count(CERTIFICATE_REQUEST):
                raise ProbeConnectionError(
                    f"{what}: the client certificate (--cert) was refused: "
                    f"{exc.reason or exc}") from exc
            raise ProbeConnectionError(f"{what}: {exc.reason or exc}") from exc
        except ConnectionRefusedError as exc:
            raise ProbeConnectionError(f"{what}: connection refused: nothing listens there",
                                       UNREACHABLE) from exc
        except OSError as exc:
            # TimeoutError and ConnectionError are OSErrors.
            if not self._tls_answered():
                raise self._no_tls(what, exc) from exc
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ProbeConnectionError(f"{what}: {reason}") from exc
        except (ValueError, UnicodeError, StekError) as exc:
            raise ProbeConnectionError(f"{what}: {exc or type(exc).__name__}") from exc

    def _no_tls(self, what: str, exc: OSError) -> ProbeConnectionError:
        """Nothing in TLS came back (no handshake message, no alert)."""
        if isinstance(exc, TimeoutError):
            why = f"nothing came back within {self.timeout:g}s"
        elif isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                              BrokenPipeError)):
            why = "the connection was closed"
        elif isinstance(exc, ssl.SSLError):
            why = f"the answer is not TLS: {exc.reason or exc}"
        else:
            why = exc.strerror or str(exc) or type(exc).__name__
        return ProbeConnectionError(f"{what}: no TLS server answered ({why})", UNREACHABLE)

    def _required(self, tls: str, cipher: str, certificate: str) -> Handshake:
        return Handshake(tls=tls, reused=False, cipher=cipher, tickets=0, ticket=b"",
                         lifetime_hint=0, certificate=certificate, cert_requested=True,
                         cert_required=True)

    def _handshake(self, target: Target, tls: str, session: Any, want_tickets: bool,
                   sni: str | None, with_cert: bool) -> Handshake:
        from .inspection import ticket_of  # the binding, loaded lazily

        ctx = self._contexts[(tls, with_cert)]
        with socket.create_connection((target.host, target.port), timeout=self.timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=self._server_hostname(target, sni),
                                session=session) as conn:
            cipher = str((conn.cipher() or ("?",))[0])
            der = conn.getpeercert(binary_form=True) or b""
            certificate = hashlib.sha256(der).hexdigest()
            if want_tickets and tls == "1.3":
                try:
                    self._read_tickets(conn)
                except ssl.SSLError:
                    # A TLS 1.3 server checks the client's (absent) certificate after
                    # the client's Finished: its alert arrives where tickets would
                    # (RFC 8446 section 4.4.2.4, certificate_required).
                    if self._refused_without_cert(with_cert):
                        return self._required(tls, cipher, certificate)
                    raise
            sess = conn.session
            reused = conn.session_reused
        count = self._count(NEW_SESSION_TICKET)
        ticket = (ticket_of(sess) or b"") if sess is not None and sess.has_ticket else b""
        if tls == "1.2" and ticket and not count:
            count = 1  # a Python without the message hook
        return Handshake(tls=tls, reused=bool(reused), cipher=cipher, tickets=count,
                         ticket=ticket,
                         lifetime_hint=int(sess.ticket_lifetime_hint) if sess else 0,
                         certificate=certificate, session=sess,
                         cert_requested=self._count(CERTIFICATE_REQUEST) > 0,
                         cert_sent=with_cert and self._count(CERTIFICATE_REQUEST) > 0)

    def _read_tickets(self, conn: ssl.SSLSocket) -> None:
        """TLS 1.3 tickets follow the handshake (RFC 8446 section 4.6.1): read until
        they stop coming, the server closes, or ``ticket_wait`` runs out."""
        deadline = time.monotonic() + self.ticket_wait
        while True:
            left = deadline - time.monotonic()
            if self._count(NEW_SESSION_TICKET):
                left = min(left, QUIET)
            if left <= 0:
                return
            conn.settimeout(left)
            before = self._count(NEW_SESSION_TICKET)
            try:
                if not conn.recv(16384):
                    return  # closed
            except TimeoutError:
                if self._count(NEW_SESSION_TICKET) == before:
                    return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionResetError):
                return
