"""``stek probe``: do these endpoints resume each other's session tickets?"""

from __future__ import annotations

import json

import click

from .. import probe as probing
from .._probe_client import ProbeError, Target, TLSConnector
from ..inspection import iso
from ..keyring import Keyring
from ..scope import scoped
from ._common import DURATION, SECONDS, lookup_store_option, open_cli_store, scope_option

VERSIONS = {"1.2": ("1.2",), "1.3": ("1.3",), "both": ("1.2", "1.3")}


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


#: The client-certificate column: what the server asked, and whether --cert was sent.
CLIENT_AUTH = {probing.CLIENT_AUTH_NONE: "-", probing.CLIENT_AUTH_REQUESTED: "asked",
               probing.CLIENT_AUTH_REQUIRED: "required"}


def _print_text(report: probing.Report) -> None:
    width = max(len(t) for t in report.targets)
    click.echo(f"{'endpoint':<{width}}  tls  tickets  hint      self   client cert  key name"
               f"{'                          key state' if report.store else ''}")
    for e in report.endpoints:
        if e.error is not None:
            click.echo(f"{e.target:<{width}}  {e.tls}  error: {e.error}")
            continue
        hint = f"{e.lifetime_hint}s" if e.lifetime_hint is not None else "-"
        state = f"  {e.key_state or '-'}" if report.store else ""
        auth = CLIENT_AUTH[e.client_auth] + (" (sent)" if e.client_cert else "")
        click.echo(f"{e.target:<{width}}  {e.tls}  {e.tickets:>7}  {hint:<8}  "
                   f"{_yes(e.self_resume):<5}  {auth:<11}  {e.key_name or '-':<32}{state}")
    for tls in dict.fromkeys(c.tls for c in report.matrix):
        click.echo(f"\nTLS {tls}: ticket from (row) offered to (column)")
        names = [f"#{i + 1}" for i in range(len(report.targets))]
        click.echo(" " * (width + 4) + "  ".join(f"{n:>4}" for n in names))
        for i, src in enumerate(report.targets):
            row = [c for c in report.matrix if c.tls == tls and c.src == src]
            marks = ["yes" if c.resumed else ("-" if not c.offered else
                                              ("err" if c.error else "NO")) for c in row]
            click.echo(f"#{i + 1:<2} {src:<{width}}" + "  ".join(f"{m:>4}" for m in marks))
    for n in report.names:
        click.echo(f"{n.target} TLS {n.tls}: ticket for {n.src} offered for {n.dst}: "
                   f"{'resumed' if n.resumed else ('-' if not n.offered else 'not resumed')}")
    if report.watch is not None:
        w = report.watch
        click.echo(f"\nwatch: {w['rounds']} rounds over {w['seconds']}s")
        for n in w["key_names"]:
            spans = ", ".join(f"{k['key_name'][:12]}… {iso(k['first_seen'])}.."
                              f"{iso(k['last_seen'])}" for k in n["key_names"])
            click.echo(f"  {n['target']} TLS {n['tls']}: "
                       f"{'changed' if n['changed'] else 'never changed'} ({spans})")
    click.echo("")
    if not report.diagnoses:
        click.echo("every endpoint resumes every endpoint's tickets" if not report.failed
                   else "some pairs do not resume")
    for d in report.diagnoses:
        click.echo(f"- {d.message}")


@click.command("probe")
@click.argument("targets", metavar="TARGET...", nargs=-1, required=True)
@click.option("--sni", "names", metavar="NAME", multiple=True,
              help="Server name to send (default: the target's host, unless an IP address).  "
                   "Repeat it to offer each endpoint's ticket from one name under every other "
                   "name: a resumption is a cross-name-resumption.")
@click.option("--allow-cross-name", is_flag=True,
              help="Report cross-name resumptions without failing (names that may share "
                   "sessions).")
@click.option("--tls", "tls", type=click.Choice(sorted(VERSIONS)), default="both",
              show_default=True, help="TLS versions to probe.")
@lookup_store_option
@scope_option
@click.option("--cert", metavar="FILE", default=None,
              help="Client certificate (PEM) for the endpoints that require one; with --key.")
@click.option("--key", "key_file", metavar="FILE", default=None,
              help="The private key of --cert (PEM).")
@click.option("--cafile", metavar="PATH", default=None,
              help="Verify certificates against these CAs (default: no verification; the "
                   "probe sends nothing secret).")
@click.option("--timeout", type=SECONDS, default="5s", show_default=True,
              help="For each connection and handshake (500ms, 5s...).")
@click.option("--watch", "watch_for", type=DURATION, default=None, metavar="DURATION",
              help="Probe repeatedly for this long and report whether key names change.")
@click.option("--interval", type=DURATION, default="60s", show_default=True,
              metavar="DURATION", help="Time between probes under --watch.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--textfile", metavar="PATH", default=None,
              help="Also write Prometheus text format to PATH (atomically), for "
                   "node_exporter's textfile collector.")
@click.pass_context
def probe_cmd(ctx: click.Context, targets: tuple[str, ...], names: tuple[str, ...],
              allow_cross_name: bool, tls: str, store_url: str | None, scope: str | None,
              cert: str | None, key_file: str | None, cafile: str | None, timeout: float,
              watch_for: int | None, interval: int, as_json: bool,
              textfile: str | None) -> None:
    """Check that the endpoints of one TLS service resume each other's session tickets.

    Each TARGET is host:port.  For each endpoint and TLS version: does it issue
    tickets (how many under TLS 1.3), the lifetime hint, the ticket's key name
    (its first 16 bytes, RFC 5077), and does it resume its own ticket.  Then
    each endpoint's ticket is offered to every endpoint: the matrix.  Works on
    any TLS server, stek-fed or not.

    With --store, each key name is looked up in the ring (its state, or "not
    in the ring"; with --scope, in that scope's keys) and the ticket is opened
    to read its session id context.

    An endpoint that asks for a client certificate is offered the other
    endpoints' tickets taken without one: a resumption is a client-auth-bypass.
    An endpoint that cannot be measured (nothing listens, no TLS server
    answers, a TLS version refused) is an error row; the others are measured.

    \b
    Exit status:
      0  every ordered pair resumes, every endpoint answered, no session
         crossed a client-certificate check (or a server name)
      1  otherwise
      2  usage error
    """
    parsed = [Target.parse(t) for t in targets]
    if len({t.label for t in parsed}) != len(parsed):
        raise click.UsageError("a TARGET is given twice")
    if len(set(names)) != len(names):
        raise click.UsageError("an --sni NAME is given twice")
    if (cert is None) != (key_file is None):
        raise click.UsageError("--cert and --key go together")
    if scope is not None and store_url is None:
        raise click.UsageError("--scope looks key names up in a store: give --store")
    store = open_cli_store(store_url) if store_url is not None else None

    def read() -> Keyring | None:
        return scoped(store.read(), scope) if store is not None else None

    ring: list[Keyring | None] = [read()]
    connector = TLSConnector(sni=names[0] if names else None, cafile=cafile, timeout=timeout,
                             cert=(cert, key_file) if cert is not None and key_file else None)

    def once() -> probing.Report:
        if store is not None and len(ring) > 1:
            ring[0] = read()  # under --watch, the ring as it is now
        ring.append(None)
        return probing.run(parsed, VERSIONS[tls], connector, ring=ring[0],
                           store=store.url if store is not None else None, names=names,
                           with_cert=cert is not None, allow_cross_name=allow_cross_name)

    try:
        if watch_for is not None:
            report = probing.watch(once, watch_for, interval, ring_of=lambda: ring[0])
        else:
            report = once()
    except ProbeError:
        if textfile is not None:
            probing.write_textfile(textfile, None)
        raise
    if textfile is not None:
        probing.write_textfile(textfile, report)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_text(report)
    failed = report.watch["any_failed"] if report.watch is not None else report.failed
    ctx.exit(probing.EXIT_SOME_DO_NOT if failed else probing.EXIT_ALL_RESUME)


def register(group: click.Group) -> None:
    group.add_command(probe_cmd)
