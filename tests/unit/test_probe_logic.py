"""The probe's pure parts, through a fake connector: which resumptions are a
client-auth-bypass, when a lifetime hint is short, what an endpoint that fails
does to the rest, and the exit status (the real-server tests are in
test_probe.py, test_probe_trust.py and test_probe_partial.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from stek import probe as probing
from stek._probe_client import Handshake, ProbeConnectionError, Target
from stek._probe_diagnoses import SHORT_HINT_SHARE
from stek.keyring import Keyring
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores.memory import MemoryStore

T0 = 1_900_000_000.0


@dataclass
class Server:
    """What one fake endpoint does: its ticket, its client-certificate policy, and
    which endpoints' tickets (by label) it resumes."""

    ticket: bytes = b"K" * 16 + b"rest"
    asks: str = "none"  # none, requested, required
    resumes: set[str] = field(default_factory=set)
    hint: int = 3600
    down: bool = False


class FakeConnector:
    def __init__(self, servers: dict[str, Server]) -> None:
        self.servers = servers
        self.calls: list[tuple[str, bool]] = []

    def handshake(self, target: Target, tls: str, session: Any = None, *,
                  want_tickets: bool = True, sni: str | None = None,
                  with_cert: bool = False) -> Handshake:
        srv = self.servers[target.label]
        self.calls.append((target.label, session is not None))
        if srv.down:
            raise ProbeConnectionError(f"{target.label} TLS {tls}: connection refused",
                                       "unreachable")
        reused = session is not None and session in srv.resumes
        if srv.asks == "required" and not with_cert and not reused:
            return Handshake(tls, False, "c", 0, b"", 0, "x", cert_requested=True,
                             cert_required=True)
        return Handshake(tls, reused, "c", 1, srv.ticket, srv.hint, "x",
                         session=target.label, cert_requested=srv.asks != "none",
                         cert_sent=with_cert and srv.asks != "none")


def run(servers: dict[str, Server], ring: Keyring | None = None, **kw: Any) -> probing.Report:
    targets = [Target.parse(label) for label in servers]
    return probing.run(targets, ("1.2",), FakeConnector(servers), ring=ring,
                       now=lambda: T0, **kw)


def kinds(report: probing.Report) -> list[str]:
    return [d.kind for d in report.diagnoses]


A, B = "a:1", "b:1"


@pytest.mark.parametrize(("origin", "dest", "bypass"), [
    ("none", "required", True),
    ("none", "requested", True),
    ("requested", "required", True),
    # Both ask and both serve a client without a certificate: one trust configuration.
    ("requested", "requested", False),
    ("none", "none", False),
])
def test_which_resumptions_bypass_a_certificate_check(origin: str, dest: str,
                                                      bypass: bool) -> None:
    report = run({A: Server(asks=origin, resumes={A, B}), B: Server(asks=dest, resumes={A, B})})
    found = [d for d in report.diagnoses if d.kind == "client-auth-bypass"]
    assert [d.targets for d in found] == ([(B, A)] if bypass else [])
    assert report.failed is (bypass or dest == "required")


def test_an_authenticated_ticket_is_no_bypass() -> None:
    """With --cert, the required endpoint's own (authenticated) ticket resumes on the
    open one: no bypass; the open one's certificate-less ticket still is."""
    report = run({A: Server(resumes={A, B}), B: Server(asks="required", resumes={A, B})},
                 with_cert=True)
    b = report.endpoint(B, "1.2")
    assert b is not None and b.client_cert and b.client_auth == "required" and b.self_resume
    assert [d.targets for d in report.diagnoses if d.kind == "client-auth-bypass"] == [(B, A)]


def test_a_required_endpoint_without_cert_is_measured_not_an_error() -> None:
    report = run({A: Server(resumes={A}), B: Server(asks="required", resumes={B})})
    b = report.endpoint(B, "1.2")
    assert b is not None and b.error is None and b.client_auth == "required"
    assert kinds(report) == ["client-auth"]
    offered = next(c for c in report.matrix if (c.src, c.dst) == (A, B))
    assert offered.offered and not offered.resumed and offered.error is None


def test_a_down_endpoint_is_an_error_row_and_never_offered_a_ticket() -> None:
    servers = {A: Server(resumes={A}), B: Server(down=True)}
    connector = FakeConnector(servers)
    report = probing.run([Target.parse(A), Target.parse(B)], ("1.2", "1.3"), connector,
                         now=lambda: T0)
    assert [(e.target, e.tls, e.error_kind) for e in report.endpoints if e.error] == [
        (B, "1.2", "unreachable"), (B, "1.3", "unreachable")]
    assert [d.kind for d in report.diagnoses] == ["unreachable", "unreachable"]
    # One failed attempt per version; every offer went to the live endpoint only.
    assert connector.calls.count((B, False)) == 2 and (B, True) not in connector.calls
    assert report.endpoint(A, "1.3") is not None and report.endpoint(A, "1.3").self_resume
    assert report.failed and not report.up(B) and report.up(A)


def ring_at(accept_for: int) -> Keyring:
    store = MemoryStore()
    init_ring(store, Policy(rotate_every=3600, accept_for=accept_for, publish_ahead=60),
              now=T0)
    return store.read()


def test_lifetime_hint_short_under_half_of_accept_for() -> None:
    ring = ring_at(7200)
    key = ring.encrypting_key(T0)
    assert key is not None
    ticket = key.name + b"rest"
    half = int(SHORT_HINT_SHARE * 7200)
    for hint, short in ((300, True), (half - 1, True), (half, False), (3600, False)):
        report = run({A: Server(ticket=ticket, hint=hint, resumes={A})}, ring=ring)
        assert ("lifetime-hint-short" in kinds(report)) is short, (hint, kinds(report))
        assert not report.failed  # a warning


def test_cross_name_resumption_fails_unless_allowed() -> None:
    servers = {A: Server(resumes={A})}
    report = run(servers, names=("a.test", "b.test"))
    assert [(n.src, n.dst, n.resumed) for n in report.names] == [
        ("a.test", "b.test", True), ("b.test", "a.test", True)]
    assert kinds(report) == ["cross-name-resumption"] * 2 and report.failed
    allowed = run(servers, names=("a.test", "b.test"), allow_cross_name=True)
    assert kinds(allowed) == ["cross-name-resumption"] * 2 and not allowed.failed
    assert "names" not in run(servers).to_dict()
