"""``stek probe``: do the endpoints of one service resume each other's tickets?

For each endpoint and TLS version the probe makes a full handshake (does it
issue tickets, how many, the lifetime hint, the ticket's key name: its first
16 bytes, RFC 5077 section 4), then offers each endpoint's ticket to every
endpoint, itself included: the matrix.  A ticket is offered more than once:
OpenSSL's stateless tickets may be (RFC 8446 section 8 limits only 0-RTT
replays).  With a ring, each key name gets its state there, and the ticket
is opened to read the session id context sealed inside it.

:func:`run` joins a :class:`~stek._probe_client.Connector` (real sockets, or a
fake in tests) to the pure parts: :func:`diagnose` reads a finished
:class:`Report` and a ring and explains, in plain words, why pairs fail.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import session as sessions
from ._duration import format_duration
from ._probe_client import Connector, Handshake, ProbeConnectionError, ProbeError, Target
from .errors import InvalidTicket
from .keyring import Keyring
from .keys import NAME_LEN
from .schedule import state_of
from .ticket import open_ticket

__all__ = [
    "Cell",
    "Diagnosis",
    "EndpointResult",
    "ProbeConnectionError",
    "ProbeError",
    "Report",
    "Target",
    "diagnose",
    "run",
    "watch",
]

EXIT_ALL_RESUME = 0
EXIT_SOME_DO_NOT = 1
EXIT_ERROR = 2


@dataclass
class EndpointResult:
    """One endpoint under one TLS version."""

    target: str
    tls: str
    tickets: int
    lifetime_hint: int | None
    key_name: str | None
    self_resume: bool | None
    cipher: str
    certificate: str
    #: With a ring: the key's state ("active", ...) or "not in the ring".
    key_state: str | None = None
    #: With a ring that opens the ticket: the session id context sealed in it (hex).
    sid_ctx: str | None = None
    #: With a ring: seconds since the key started encrypting.
    key_age: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Cell:
    """A ticket from ``src`` offered to ``dst``."""

    src: str
    dst: str
    tls: str
    resumed: bool
    offered: bool = True  # False: ``src`` issued no ticket to offer

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.src, "to": self.dst, "tls": self.tls, "resumed": self.resumed,
                "offered": self.offered}


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # different-keys, no-resumption, lifetime-hint, no-tickets, stale-key, ...
    tls: str | None
    targets: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tls": self.tls, "targets": list(self.targets),
                "message": self.message}


@dataclass
class Report:
    now: float
    targets: tuple[str, ...]
    endpoints: list[EndpointResult]
    matrix: list[Cell]
    diagnoses: list[Diagnosis] = field(default_factory=list)
    store: str | None = None
    watch: dict[str, Any] | None = None

    @property
    def all_resume(self) -> bool:
        return bool(self.matrix) and all(c.resumed for c in self.matrix)

    @property
    def exit_status(self) -> int:
        return EXIT_ALL_RESUME if self.all_resume else EXIT_SOME_DO_NOT

    def endpoint(self, target: str, tls: str) -> EndpointResult | None:
        return next((e for e in self.endpoints if e.target == target and e.tls == tls), None)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "now": int(self.now),
            "store": self.store,
            "all_resume": self.all_resume,
            "endpoints": [e.to_dict() for e in self.endpoints],
            "matrix": [c.to_dict() for c in self.matrix],
            "diagnoses": [d.to_dict() for d in self.diagnoses],
        }
        if self.watch is not None:
            doc["watch"] = self.watch
        return doc


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


def run(targets: Sequence[Target], versions: Sequence[str], connector: Connector, *,
        ring: Keyring | None = None, now: Callable[[], float] = time.time,
        store: str | None = None) -> Report:
    """Probe every endpoint, then every ordered pair, for each TLS version.

    Raises :class:`ProbeConnectionError` when any handshake fails.
    """
    labels = tuple(t.label for t in targets)
    started = now()
    endpoints: list[EndpointResult] = []
    matrix: list[Cell] = []
    for tls in versions:
        issued: dict[str, Handshake] = {}
        for target in targets:
            hs = connector.handshake(target, tls)
            issued[target.label] = hs
            result = EndpointResult(
                target=target.label, tls=tls, tickets=hs.tickets if hs.ticket else 0,
                lifetime_hint=hs.lifetime_hint if hs.ticket else None,
                key_name=_key_name(hs.ticket), self_resume=None, cipher=hs.cipher,
                certificate=hs.certificate)
            if ring is not None:
                _with_ring(result, hs.ticket, ring, started)
            endpoints.append(result)
        for src in targets:
            first = issued[src.label]
            for dst in targets:
                if not first.ticket:
                    matrix.append(Cell(src.label, dst.label, tls, False, offered=False))
                    continue
                again = connector.handshake(dst, tls, first.session, want_tickets=False)
                matrix.append(Cell(src.label, dst.label, tls, again.reused))
        for e in endpoints:
            if e.tls == tls:
                cell = next(c for c in matrix if c.tls == tls and c.src == c.dst == e.target)
                e.self_resume = cell.resumed if cell.offered else None
    report = Report(started, labels, endpoints, matrix, store=store)
    report.diagnoses = diagnose(report, ring)
    return report


# -- explaining ---------------------------------------------------------------------


def _short(name: str | None) -> str:
    return name[:12] + "…" if name else "-"


def _list(items: Iterable[str]) -> str:
    seq = list(items)
    return seq[0] if len(seq) == 1 else ", ".join(seq[:-1]) + " and " + seq[-1]


def diagnose(report: Report, ring: Keyring | None) -> list[Diagnosis]:
    """Plain-word explanations of what the matrix shows (pure)."""
    out: list[Diagnosis] = []
    versions = list(dict.fromkeys(e.tls for e in report.endpoints))
    for tls in versions:
        eps = [e for e in report.endpoints if e.tls == tls]
        by = {e.target: e for e in eps}
        for e in eps:
            if not e.tickets or e.key_name is None:
                out.append(Diagnosis(
                    "no-tickets", tls, (e.target,),
                    f"{e.target} issues no session tickets under TLS {tls} (tickets are off, "
                    f"or it keeps sessions in a server-side cache): nothing it serves can "
                    f"resume elsewhere"))
        groups: dict[str, list[str]] = defaultdict(list)
        for e in eps:
            if e.key_name is not None:
                groups[e.key_name].append(e.target)
        if len(groups) > 1:
            def in_ring(name: str) -> bool:
                return ring is not None and ring.find(bytes.fromhex(name)) is not None

            # The largest group is the fleet; on a tie, the group on the ring's key.
            ranked = sorted(groups.items(),
                            key=lambda kv: (-len(kv[1]), not in_ring(kv[0]), kv[0]))
            parts = "; ".join(f"{_list(ts)} on key {_short(name)}" for name, ts in ranked)
            (top, first), (second, runner) = ranked[0], ranked[1]
            if len(first) > len(runner) or (in_ring(top) and not in_ring(second)):
                odd = tuple(t for _, ts in ranked[1:] for t in ts)
                who = f"{_list(odd)} {'is the odd one' if len(odd) == 1 else 'are'} out"
            else:
                odd, who = tuple(t for _, ts in ranked for t in ts), "no key has a majority"
            out.append(Diagnosis(
                "different-keys", tls, odd,
                f"TLS {tls}: endpoints seal tickets under different keys ({parts}): {who}; "
                f"an endpoint resumes only tickets under keys it holds"))
        for cell in report.matrix:
            if cell.tls != tls or cell.resumed or not cell.offered:
                continue
            a, b = by[cell.src], by[cell.dst]
            if a.key_name is None or a.key_name != b.key_name:
                continue
            out.append(_same_key_no_resume(a, b, tls))
        if ring is not None:
            out.extend(_ring_diagnoses(eps, ring, report.now, tls))
    return out


def _same_key_no_resume(a: EndpointResult, b: EndpointResult, tls: str) -> Diagnosis:
    pair = (a.target,) if a.target == b.target else (a.target, b.target)
    where = "its own ticket" if a.target == b.target else f"{a.target}'s ticket"
    seen: list[str] = []
    if a.sid_ctx is not None and b.sid_ctx is not None and a.sid_ctx != b.sid_ctx:
        seen.append(f"the session id contexts differ ({a.sid_ctx} vs {b.sid_ctx}): OpenSSL "
                    f"resumes a session only in the context it was made in")
    if a.cipher != b.cipher:
        seen.append(f"the cipher differs ({a.cipher} vs {b.cipher})")
    if a.certificate != b.certificate:
        seen.append("the certificates differ (nginx derives its session id context from "
                    "its certificates)")
    if seen:
        why = "; ".join(seen)
    else:
        hidden = ("the session id context is sealed inside the ticket: give --store to read it"
                  if a.sid_ctx is None else "the session id contexts are equal")
        why = (f"no difference the client can see ({hidden}); the endpoint rejects the "
               f"ticket for its own reasons (session timeout, accept_for, a forged or "
               f"corrupt key file)")
    return Diagnosis(
        "no-resumption", tls, pair,
        f"TLS {tls}: {b.target} holds key {_short(a.key_name)} but does not resume {where}: "
        f"{why}")


def _ring_diagnoses(eps: list[EndpointResult], ring: Keyring, now: float,
                    tls: str) -> list[Diagnosis]:
    out = []
    window = ring.policy.window
    for e in eps:
        if e.key_name is None:
            continue
        key = ring.find(bytes.fromhex(e.key_name))
        if key is None:
            out.append(Diagnosis(
                "not-in-ring", tls, (e.target,),
                f"TLS {tls}: {e.target} seals tickets under key {_short(e.key_name)}, which "
                f"is not in the ring: it is not fed by this store"))
            continue
        accepted = max(0, int(key.expires_at - now))
        if e.lifetime_hint is not None and e.lifetime_hint > accepted:
            out.append(Diagnosis(
                "lifetime-hint", tls, (e.target,),
                f"TLS {tls}: {e.target} promises tickets for {format_duration(e.lifetime_hint)} "
                f"(lifetime hint) but the ring accepts its key for "
                f"{format_duration(accepted)} more (rotate_every + accept_for = "
                f"{format_duration(window)}): lower the server's session timeout"))
        if e.key_age is not None and e.key_age > window:
            out.append(Diagnosis(
                "stale-key", tls, (e.target,),
                f"TLS {tls}: {e.target} still seals tickets under key {_short(e.key_name)}, "
                f"which started encrypting {format_duration(e.key_age)} ago, more than "
                f"rotate_every + accept_for ({format_duration(window)}): this server is not "
                f"getting new keys (export or reload failing?)"))
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
                  "any_failed": any(not r.all_resume for r in rounds), "key_names": names}
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


# -- Prometheus textfile ---------------------------------------------------------------


def write_textfile(path: str, report: Report | None) -> None:
    """The report in Prometheus text format, for node_exporter's textfile collector
    (``report`` None: the probe failed, ``stek_probe_success 0``).

    prometheus_client.write_to_textfile writes a temporary file beside ``path``
    and renames it over ``path``, so the collector never reads half a file.
    """
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _Probe(Collector):
        def collect(self) -> Iterable[GaugeMetricFamily]:
            ok = GaugeMetricFamily("stek_probe_success",
                                   "1 if every handshake of the last probe succeeded.")
            ok.add_metric([], 0.0 if report is None else 1.0)
            yield ok
            stamp = GaugeMetricFamily("stek_probe_timestamp_seconds",
                                      "When the last probe ran.")
            stamp.add_metric([], report.now if report is not None else time.time())
            yield stamp
            if report is None:
                return
            yield _gauge("stek_probe_all_resume", "1 if every ordered pair resumed.", [],
                         [([], float(report.all_resume))])
            labels = ["target", "tls"]
            eps = report.endpoints
            yield _gauge("stek_probe_tickets", "Tickets issued on a full handshake.", labels,
                         [([e.target, e.tls], float(e.tickets)) for e in eps])
            yield _gauge("stek_probe_ticket_lifetime_hint_seconds",
                         "The lifetime hint of the endpoint's ticket.", labels,
                         [([e.target, e.tls], float(e.lifetime_hint)) for e in eps
                          if e.lifetime_hint is not None])
            yield _gauge("stek_probe_self_resume", "1 if the endpoint resumed its own ticket.",
                         labels, [([e.target, e.tls], float(e.self_resume)) for e in eps
                                  if e.self_resume is not None])
            yield _gauge("stek_probe_key_info", "The key name the endpoint seals tickets "
                         "under (public: it travels in clear in every ticket).",
                         [*labels, "key_name", "key_state"],
                         [([e.target, e.tls, e.key_name, e.key_state or ""], 1.0)
                          for e in eps if e.key_name is not None])
            yield _gauge("stek_probe_resumed", "1 if a ticket from one endpoint resumed on "
                         "another.", ["from", "to", "tls"],
                         [([c.src, c.dst, c.tls], float(c.resumed)) for c in report.matrix])
            kinds: dict[str, int] = defaultdict(int)
            for d in report.diagnoses:
                kinds[d.kind] += 1
            yield _gauge("stek_probe_diagnoses", "Problems found, by kind.", ["kind"],
                         [([k], float(n)) for k, n in sorted(kinds.items())])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Probe())
    try:
        write_to_textfile(path, registry)
    except OSError as exc:
        raise ProbeError(f"cannot write --textfile {path}: {exc.strerror or exc}") from exc


def _gauge(name: str, doc: str, labels: list[str],
           samples: list[tuple[list[str], float]]) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        g.add_metric(values, value if math.isfinite(value) else math.nan)
    return g
