"""``stek probe``: do these endpoints resume each other's session tickets?"""

from __future__ import annotations

import json

import click

from .. import probe as probing
from .._probe_client import ProbeError, Target, TLSConnector
from ..inspect import iso
from ..keyring import Keyring
from ._common import DURATION, SECONDS, lookup_store_option, open_cli_store

VERSIONS = {"1.2": ("1.2",), "1.3": ("1.3",), "both": ("1.2", "1.3")}


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def _print_text(report: probing.Report) -> None:
    width = max(len(t) for t in report.targets)
    click.echo(f"{'endpoint':<{width}}  tls  tickets  hint      self   key name"
               f"{'                          key state' if report.store else ''}")
    for e in report.endpoints:
        hint = f"{e.lifetime_hint}s" if e.lifetime_hint is not None else "-"
        state = f"  {e.key_state or '-'}" if report.store else ""
        click.echo(f"{e.target:<{width}}  {e.tls}  {e.tickets:>7}  {hint:<8}  "
                   f"{_yes(e.self_resume):<5}  {e.key_name or '-':<32}{state}")
    for tls in dict.fromkeys(c.tls for c in report.matrix):
        click.echo(f"\nTLS {tls}: ticket from (row) offered to (column)")
        names = [f"#{i + 1}" for i in range(len(report.targets))]
        click.echo(" " * (width + 4) + "  ".join(f"{n:>4}" for n in names))
        for i, src in enumerate(report.targets):
            row = [c for c in report.matrix if c.tls == tls and c.src == src]
            marks = ["yes" if c.resumed else ("-" if not c.offered else "NO") for c in row]
            click.echo(f"#{i + 1:<2} {src:<{width}}" + "  ".join(f"{m:>4}" for m in marks))
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
        click.echo("every endpoint resumes every endpoint's tickets" if report.all_resume
                   else "some pairs do not resume")
    for d in report.diagnoses:
        click.echo(f"- {d.message}")


@click.command("probe")
@click.argument("targets", metavar="TARGET...", nargs=-1, required=True)
@click.option("--sni", metavar="NAME", default=None,
              help="Server name to send (default: the target's host, unless an IP address).")
@click.option("--tls", "tls", type=click.Choice(sorted(VERSIONS)), default="both",
              show_default=True, help="TLS versions to probe.")
@lookup_store_option
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
def probe_cmd(ctx: click.Context, targets: tuple[str, ...], sni: str | None, tls: str,
              store_url: str | None, cafile: str | None, timeout: float,
              watch_for: int | None, interval: int, as_json: bool,
              textfile: str | None) -> None:
    """Check that the endpoints of one TLS service resume each other's session tickets.

    Each TARGET is host:port.  For each endpoint and TLS version: does it issue
    tickets (how many under TLS 1.3), the lifetime hint, the ticket's key name
    (its first 16 bytes, RFC 5077), and does it resume its own ticket.  Then
    each endpoint's ticket is offered to every endpoint: the matrix.  Works on
    any TLS server, stek-fed or not.

    With --store, each key name is looked up in the ring (its state, or "not
    in the ring") and the ticket is opened to read its session id context.

    \b
    Exit status:
      0  every ordered pair resumes
      1  some pair does not
      2  usage error, or a connection or handshake failed
    """
    parsed = [Target.parse(t) for t in targets]
    if len({t.label for t in parsed}) != len(parsed):
        raise click.UsageError("a TARGET is given twice")
    store = open_cli_store(store_url) if store_url is not None else None
    ring: list[Keyring | None] = [store.read() if store is not None else None]
    connector = TLSConnector(sni=sni, cafile=cafile, timeout=timeout)

    def once() -> probing.Report:
        if store is not None and len(ring) > 1:
            ring[0] = store.read()  # under --watch, the ring as it is now
        ring.append(None)
        return probing.run(parsed, VERSIONS[tls], connector, ring=ring[0],
                           store=store.url if store is not None else None)

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
    failed = report.watch["any_failed"] if report.watch is not None else not report.all_resume
    ctx.exit(probing.EXIT_SOME_DO_NOT if failed else probing.EXIT_ALL_RESUME)


def register(group: click.Group) -> None:
    group.add_command(probe_cmd)
