"""``stek inspect``: would this server resume that ticket, and why not?"""

from __future__ import annotations

import json
import sys
import time

import click

from ..inspect import Inspection, inspect_ticket, iso, read_ticket
from ..session import SessionInfo
from ._common import open_cli_store, store_option

#: Exit statuses, documented in --help.
EXIT_RESUME = 0
EXIT_NO_RESUME = 1


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8", errors="strict") as f:
            return f.read()
    except UnicodeDecodeError:
        raise click.BadParameter("not text (expected a session PEM, hex or base64)",
                                 param_hint=f"INPUT {path!r}") from None
    except OSError as exc:
        raise click.BadParameter(f"cannot read it: {exc.strerror or exc}",
                                 param_hint=f"INPUT {path!r}") from None


def _session_lines(info: SessionInfo, indent: str = "  ") -> list[str]:
    lines = [
        f"{indent}protocol      {info.protocol}",
        f"{indent}cipher        {info.cipher_label}",
        f"{indent}created       {iso(info.created_at)}",
        f"{indent}timeout       {info.timeout}s (until {iso(info.expires_at)})",
        f"{indent}sni           {info.sni or '-'}",
        f"{indent}alpn          "
        f"{info.alpn.decode('ascii', 'replace') if info.alpn is not None else '-'}",
        f"{indent}peer cert     "
        f"{('yes: ' + (info.peer_subject or '?')) if info.peer_certificate else 'no'}",
        f"{indent}secret        {info.secret_len} bytes (never shown)",
    ]
    if info.session_id:
        lines.append(f"{indent}session id    {info.session_id.hex()}")
    if info.lifetime_hint:
        lines.append(f"{indent}lifetime hint {info.lifetime_hint}s")
    if info.ticket_len:
        lines.append(f"{indent}ticket        {info.ticket_len} bytes")
    if info.tls13:
        lines.append(f"{indent}tls1.3        max_early_data {info.max_early_data}, "
                     f"age_add {info.age_add}")
    if info.kex_group is not None:
        lines.append(f"{indent}group         0x{info.kex_group:04X}")
    return lines


def _print_text(result: Inspection, store_url: str, form: str) -> None:
    name = result.key_name.hex() if result.key_name is not None else "-"
    click.echo(f"ticket        {result.ticket_len} bytes ({form}), key name {name}")
    if result.key is not None:
        k = result.key
        state = result.key_state.value if result.key_state else "?"
        click.echo(f"key           in {store_url}: {state}, {k.size}-byte key, active "
                   f"{iso(k.activates_at)} .. {iso(k.retires_at)}, accepted until "
                   f"{iso(k.expires_at)}")
    else:
        click.echo(f"key           not in {store_url}")
    click.echo(f"verdict       {result.verdict.value}")
    click.echo(f"reason        {result.reason}")
    if result.resumes:
        click.echo(f"callback      answers {int(result.answer)} at {iso(result.now)}")
    if result.session is not None:
        click.echo("session (ticket state):")
        for line in _session_lines(result.session):
            click.echo(line)
    if result.client_session is not None:
        click.echo("client session (input file):")
        for line in _session_lines(result.client_session):
            click.echo(line)


@click.command("inspect")
@click.argument("input_path", metavar="INPUT")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def inspect_cmd(ctx: click.Context, input_path: str, store_url: str | None,
                as_json: bool) -> None:
    """Explain whether a server with this ring would resume a session ticket.

    INPUT is a session file written by 'openssl s_client -sess_out FILE', a
    raw ticket in hex or base64, or '-' to read either from stdin.

    Prints the ticket's key name, the matching key in the ring and its state,
    the verdict (resume, resume and renew, or full handshake) with its reason
    (unknown key, expired at <time>, bad MAC, malformed...), and the decoded
    session.  Key bytes and session secrets are never printed.

    \b
    Exit status:
      0  the server would resume the session (resume, or resume and renew)
      1  the server would not (full handshake)
      2  usage error, unreadable input or store
    """
    text = _read(input_path)
    store = open_cli_store(store_url)
    ring = store.read()
    parsed = read_ticket(text)
    result = inspect_ticket(parsed.ticket, ring, time.time(),
                            client_session=parsed.client_session)
    if as_json:
        doc = result.to_dict()
        doc["store"] = store.url
        doc["input_form"] = parsed.form
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_text(result, store.url, parsed.form)
    ctx.exit(EXIT_RESUME if result.resumes else EXIT_NO_RESUME)


def register(group: click.Group) -> None:
    group.add_command(inspect_cmd)
