"""``stek probe``: do the endpoints of one service resume each other's tickets?

For each endpoint and TLS version the probe makes a full handshake (does it
issue tickets, how many, the lifetime hint, the ticket's key name: its first
16 bytes, RFC 5077 section 4; does it ask for a client certificate), then
offers each endpoint's ticket to every endpoint, itself included: the matrix.
A ticket is offered more than once: OpenSSL's stateless tickets may be
(RFC 8446 section 8 limits only 0-RTT replays).  With a ring, each key name
gets its state there, and the ticket is opened to read the session id
context sealed inside it.

An endpoint that cannot be measured (nothing listens, no TLS server answers,
a version refused) gets an error row; the others are measured all the same.
An endpoint that requires a client certificate is measured too: the other
endpoints' certificate-less tickets are offered to it (a resumption there is
a ``client-auth-bypass``), and with a client certificate (``--cert``) its
own tickets are measured as well.  With several server names (``--sni``),
each endpoint's ticket from one name is offered to it under every other name.

:func:`run` joins a :class:`~stek._probe_client.Connector` (real sockets, or a
fake in tests) to the pure parts: :func:`diagnose` reads a finished
:class:`Report` and a ring and explains, in plain words, why pairs fail.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from . import session as sessions
from ._duration import format_duration
from ._probe_client import Connector, Handshake, ProbeConnectionError, ProbeError, Target
from ._probe_diagnoses import diagnose
from ._probe_report import (
    CLIENT_AUTH_NONE,
    CLIENT_AUTH_REQUESTED,
    CLIENT_AUTH_REQUIRED,
    EXIT_ALL_RESUME,
    EXIT_ERROR,
    EXIT_SOME_DO_NOT,
    Cell,
    Diagnosis,
    EndpointResult,
    NameCell,
    Report,
)
from ._probe_textfile import write_textfile
from .errors import InvalidTicket
from .keyring import Keyring
from .keys import NAME_LEN
from .schedule import state_of
from .ticket import open_ticket

__all__ = [
    "CLIENT_AUTH_NONE",
    "CLIENT_AUTH_REQUESTED",
    "CLIENT_AUTH_REQUIRED",
    "EXIT_ALL_RESUME",
    "EXIT_ERROR",
    "EXIT_SOME_DO_NOT",
    "Cell",
    "Diagnosis",
    "EndpointResult",
    "NameCell",
    "ProbeConnectionError",
    "ProbeError",
    "Report",
    "Target",
    "diagnose",
    "run",
    "watch",
    "write_textfile",
]


# -- running the handshakes ---------------------------------------------------------


def _key_name(ticket: bytes) -> str | None:
    return ticket[:NAME_LEN].hex() if len(ticket) >= NAME_LEN else None


def _with_ring(result: EndpointResult, ticket: bytes, ring: Keyring, now: float) -> None:
    if result.key_name is None:
        return
    key = ring.find(bytes.fromhex(result.key_name))
    if key is None:
        result.key_state = "not in the ring"
        return
    result.key_state = state_of(key, now).value
    result.key_age = int(now - key.activates_at)
    # A forged or foreign ticket under a known name: nothing more to read.
    with contextlib.suppress(InvalidTicket):
        result.sid_ctx = sessions.decode(open_ticket(ticket, ring).state).sid_ctx.hex()


def _client_auth(hs: Handshake) -> str:
    if hs.cert_required:
        return CLIENT_AUTH_REQUIRED
    return CLIENT_AUTH_REQUESTED if hs.cert_requested else CLIENT_AUTH_NONE


def _measure(connector: Connector, target: Target, tls: str,
             with_cert: bool) -> tuple[Handshake | None, EndpointResult]:
    """The endpoint's full handshake: without a client certificate, then, where one
    is required and the operator has one, with it."""
    try:
        hs = connector.handshake(target, tls)
        auth = _client_auth(hs)
        if hs.cert_required and with_cert:
            hs = connector.handshake(target, tls, with_cert=True)
    except ProbeConnectionError as exc:
        return None, EndpointResult(
            target=target.label, tls=tls, tickets=0, lifetime_hint=None, key_name=None,
            self_resume=None, cipher="", certificate="", error=str(exc), error_kind=exc.kind)
    return hs, EndpointResult(
        target=target.label, tls=tls, tickets=hs.tickets if hs.ticket else 0,
        lifetime_hint=hs.lifetime_hint if hs.ticket else None,
        key_name=_key_name(hs.ticket), self_resume=None, cipher=hs.cipher,
        certificate=hs.certificate, client_auth=auth, client_cert=hs.cert_sent)


def _offer(connector: Connector, first: Handshake | None, dst: Target, tls: str, *,
           dst_measured: bool = True, sni: str | None = None) -> tuple[bool, bool, str | None]:
    """Offer ``first``'s ticket to ``dst``: (resumed, offered, error)."""
    if first is None or not first.ticket:
        return False, False, None
    if not dst_measured:
        return False, False, f"{dst.label} could not be measured"
    try:
        again = connector.handshake(dst, tls, first.session, want_tickets=False,
                                    with_cert=first.cert_sent, sni=sni)
    except ProbeConnectionError as exc:
        return False, True, str(exc)
    return again.reused, True, None


def run(targets: Sequence[Target], versions: Sequence[str], connector: Connector, *,
        ring: Keyring | None = None, now: Callable[[], float] = time.time,
        store: str | None = None, names: Sequence[str] = (), with_cert: bool = False,
        allow_cross_name: bool = False) -> Report:
    """Probe every endpoint, then every ordered pair, for each TLS version.

    ``names``: with two or more, the server names to cross on each endpoint (the
    connector sends its own default name for everything else).  ``with_cert``:
    the connector holds a client certificate for the endpoints that require one.
    An endpoint that fails is an error row, never an exception.
    """
    labels = tuple(t.label for t in targets)
    started = now()
    endpoints: list[EndpointResult] = []
    matrix: list[Cell] = []
    crossed: list[NameCell] = []
    for tls in versions:
        issued: dict[str, Handshake | None] = {}
        results: dict[str, EndpointResult] = {}
        for target in targets:
            hs, result = _measure(connector, target, tls, with_cert)
            issued[target.label], results[target.label] = hs, result
            if ring is not None and hs is not None:
                _with_ring(result, hs.ticket, ring, started)
            endpoints.append(result)
        for src in targets:
            for dst in targets:
                resumed, offered, error = _offer(
                    connector, issued[src.label], dst, tls,
                    dst_measured=results[dst.label].error is None)
                matrix.append(Cell(src.label, dst.label, tls, resumed, offered, error))
        for label, e in results.items():
            cell = next(c for c in matrix if c.tls == tls and c.src == c.dst == label)
            e.self_resume = cell.resumed if cell.offered and cell.error is None else None
        if len(names) > 1:
            for target in targets:
                if results[target.label].error is None:
                    crossed.extend(_cross_names(connector, target, tls, names, with_cert))
    report = Report(started, labels, endpoints, matrix, store=store, names=crossed,
                    allow_cross_name=allow_cross_name)
    report.diagnoses = diagnose(report, ring)
    return report


def _cross_names(connector: Connector, target: Target, tls: str, names: Sequence[str],
                 with_cert: bool) -> list[NameCell]:
    """Each name's ticket offered to the same endpoint under every other name."""
    out: list[NameCell] = []
    for src in names:
        try:
            first = connector.handshake(target, tls, sni=src)
            if first.cert_required and with_cert:
                first = connector.handshake(target, tls, sni=src, with_cert=True)
        except ProbeConnectionError as exc:
            out.extend(NameCell(target.label, tls, src, dst, False, False, str(exc))
                       for dst in names if dst != src)
            continue
        for dst in names:
            if dst != src:
                resumed, offered, error = _offer(connector, first, target, tls, sni=dst)
                out.append(NameCell(target.label, tls, src, dst, resumed, offered, error))
    return out


# -- watching -------------------------------------------------------------------------


def watch(once: Callable[[], Report], duration: float, interval: float, *,
          sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic,
          ring_of: Callable[[], Keyring | None] = lambda: None) -> Report:
    """Probe again every ``interval`` for ``duration``; the last report, with the
    key names each endpoint used over time (``report.watch``) and whether they changed."""
    start = clock()
    rounds: list[Report] = []
    due = start
    while True:
        rounds.append(once())
        due += interval  # rounds at 0, interval, 2 * interval... up to duration
        if due - start > duration:
            break
        sleep(max(0.0, due - clock()))
    last = rounds[-1]
    seen: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(dict)
    for r in rounds:
        for e in r.endpoints:
            if e.key_name is not None:
                span = seen[(e.target, e.tls)].setdefault(e.key_name, [int(r.now), int(r.now)])
                span[1] = int(r.now)
    names = []
    for (target, tls), spans in sorted(seen.items()):
        names.append({"target": target, "tls": tls, "changed": len(spans) > 1,
                      "key_names": [{"key_name": n, "first_seen": s[0], "last_seen": s[1]}
                                    for n, s in spans.items()]})
    elapsed = int(rounds[-1].now - rounds[0].now)
    last.watch = {"rounds": len(rounds), "seconds": elapsed,
                  "any_failed": any(r.failed for r in rounds), "key_names": names}
    unchanged = [n for n in names if not n["changed"]]
    ring = ring_of()
    if ring is not None and elapsed > ring.policy.rotate_every:
        for n in unchanged:
            target, tls = str(n["target"]), str(n["tls"])
            last.diagnoses.append(Diagnosis(
                "never-rotates", tls, (target,),
                f"TLS {tls}: {target} kept one key name for "
                f"{format_duration(elapsed)}, longer than rotate_every "
                f"({format_duration(ring.policy.rotate_every)})"))
    return last
