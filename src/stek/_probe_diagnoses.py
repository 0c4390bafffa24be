"""``stek probe``'s diagnoses: what a finished report shows, in plain words (pure).

Besides pairs that fail to resume, two resumptions are problems in themselves
(ticket confusion: a session carried across a trust boundary by shared keys):

* ``client-auth-bypass``: an endpoint that asks for a client certificate
  resumed a ticket another endpoint issued to a client without one, so the
  client skipped the certificate check.  Flagged when the endpoint *requires*
  a certificate (the handshake fails without one), or when it asks for one
  and the ticket's origin asked for none (two endpoints that both ask but let
  a client in without a certificate are one trust configuration: a client
  gets nothing there it would not get by sending none).
* ``cross-name-resumption``: one endpoint resumed, under one server name, a
  ticket it issued under another (``--sni`` given more than once).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from ._duration import format_duration
from ._probe_report import (
    CLIENT_AUTH_NONE,
    CLIENT_AUTH_REQUIRED,
    CROSS_NAME,
    Diagnosis,
    EndpointResult,
    Report,
)
from .keyring import Keyring

#: ``lifetime-hint-short``: a hint under this share of the ring's accept_for.
#: A client forgets a ticket when its hint runs out (RFC 5077 section 3.3,
#: RFC 8446 section 4.6.1), so below half of accept_for most of the window the
#: ring pays for (keys kept, exported and rotated) buys no resumption.
SHORT_HINT_SHARE = 0.5


def _short(name: str | None) -> str:
    return name[:12] + "…" if name else "-"


def _list(items: Iterable[str]) -> str:
    seq = list(items)
    return seq[0] if len(seq) == 1 else ", ".join(seq[:-1]) + " and " + seq[-1]


def is_bypass(a: EndpointResult, b: EndpointResult) -> bool:
    """A's certificate-less ticket resuming on B would skip B's certificate check."""
    if a.target == b.target or a.client_cert or b.client_auth == CLIENT_AUTH_NONE:
        return False
    return b.client_auth == CLIENT_AUTH_REQUIRED or a.client_auth == CLIENT_AUTH_NONE


def diagnose(report: Report, ring: Keyring | None) -> list[Diagnosis]:
    """Plain-word explanations of what the matrix shows."""
    out: list[Diagnosis] = []
    versions = list(dict.fromkeys(e.tls for e in report.endpoints))
    for tls in versions:
        eps = [e for e in report.endpoints if e.tls == tls]
        by = {e.target: e for e in eps}
        measured = [e for e in eps if e.error is None]
        out.extend(_endpoint_diagnoses(eps, tls))
        out.extend(_different_keys(measured, ring, tls))
        for cell in report.matrix:
            if cell.tls != tls or not cell.offered or cell.error is not None:
                continue
            a, b = by[cell.src], by[cell.dst]
            if cell.resumed and is_bypass(a, b):
                out.append(_bypass(a, b, tls))
            elif not cell.resumed and a.key_name is not None and a.key_name == b.key_name \
                    and not is_bypass(a, b):
                out.append(_same_key_no_resume(a, b, tls))
        for n in report.names:
            if n.tls == tls and n.resumed:
                out.append(Diagnosis(
                    CROSS_NAME, tls, (n.target,),
                    f"TLS {tls}: {n.target} resumed a ticket it issued for server name "
                    f"{n.src} on a connection for {n.dst}: a session crosses from one name "
                    f"to the other (give each name its own listener: a server decrypts "
                    f"every ticket on a port with the keys of the context that received "
                    f"the connection, nginx its default server block's)"))
        if ring is not None:
            out.extend(_ring_diagnoses(measured, ring, report.now, tls))
    return out


def _endpoint_diagnoses(eps: list[EndpointResult], tls: str) -> list[Diagnosis]:
    out = []
    for e in eps:
        if e.error is not None:
            out.append(Diagnosis(e.error_kind or "handshake-failed", tls, (e.target,),
                                 e.error))
        elif e.client_auth == CLIENT_AUTH_REQUIRED and not e.client_cert:
            out.append(Diagnosis(
                "client-auth", tls, (e.target,),
                f"{e.target} requires a client certificate under TLS {tls}: its own tickets "
                f"were not measured (give --cert and --key to measure them); the other "
                f"endpoints' tickets were offered to it without one"))
        elif not e.tickets or e.key_name is None:
            out.append(Diagnosis(
                "no-tickets", tls, (e.target,),
                f"{e.target} issues no session tickets under TLS {tls} (tickets are off, "
                f"or it keeps sessions in a server-side cache): nothing it serves can "
                f"resume elsewhere"))
    return out


def _different_keys(eps: list[EndpointResult], ring: Keyring | None,
                    tls: str) -> list[Diagnosis]:
    groups: dict[str, list[str]] = defaultdict(list)
    for e in eps:
        if e.key_name is not None:
            groups[e.key_name].append(e.target)
    if len(groups) < 2:
        return []

    def in_ring(name: str) -> bool:
        return ring is not None and ring.find(bytes.fromhex(name)) is not None

    # The largest group is the fleet; on a tie, the group on the ring's key.
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), not in_ring(kv[0]), kv[0]))
    parts = "; ".join(f"{_list(ts)} on key {_short(name)}" for name, ts in ranked)
    (top, first), (second, runner) = ranked[0], ranked[1]
    if len(first) > len(runner) or (in_ring(top) and not in_ring(second)):
        odd = tuple(t for _, ts in ranked[1:] for t in ts)
        who = f"{_list(odd)} {'is the odd one' if len(odd) == 1 else 'are'} out"
    else:
        odd, who = tuple(t for _, ts in ranked for t in ts), "no key has a majority"
    return [Diagnosis(
        "different-keys", tls, odd,
        f"TLS {tls}: endpoints seal tickets under different keys ({parts}): {who}; "
        f"an endpoint resumes only tickets under keys it holds")]


def _bypass(a: EndpointResult, b: EndpointResult, tls: str) -> Diagnosis:
    asks = "requires" if b.client_auth == CLIENT_AUTH_REQUIRED else "asks for"
    origin = ("which asks for none" if a.client_auth == CLIENT_AUTH_NONE
              else "taken without one")
    return Diagnosis(
        "client-auth-bypass", tls, (b.target, a.target),
        f"TLS {tls}: {b.target} {asks} a client certificate but resumed a ticket from "
        f"{a.target} ({origin}) for a client that sent none: the client skips the "
        f"certificate check (give the two different key scopes: stek export --scope, "
        f"stek.install(..., scope=))")


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
    accept_for = ring.policy.accept_for
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
        elif e.lifetime_hint is not None and e.lifetime_hint < SHORT_HINT_SHARE * accept_for:
            out.append(Diagnosis(
                "lifetime-hint-short", tls, (e.target,),
                f"TLS {tls}: {e.target} promises tickets for only "
                f"{format_duration(e.lifetime_hint)} (lifetime hint), under half of the "
                f"ring's accept_for ({format_duration(accept_for)}): clients drop its tickets "
                f"long before the ring stops accepting them; raise the server's session "
                f"timeout to accept_for (nginx ssl_session_timeout, HAProxy "
                f"tune.ssl.lifetime, Apache SSLSessionCacheTimeout)"))
        if e.key_age is not None and e.key_age > window:
            out.append(Diagnosis(
                "stale-key", tls, (e.target,),
                f"TLS {tls}: {e.target} still seals tickets under key {_short(e.key_name)}, "
                f"which started encrypting {format_duration(e.key_age)} ago, more than "
                f"rotate_every + accept_for ({format_duration(window)}): this server is not "
                f"getting new keys (export or reload failing?)"))
    return out


__all__ = ["SHORT_HINT_SHARE", "diagnose", "is_bypass"]
