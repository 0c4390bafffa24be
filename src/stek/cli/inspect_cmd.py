"""``stek inspect``: would this server resume that ticket, and why not?"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from ..compat import (
    HAPROXY_SESSION_ID_CONTEXT,
    PYTHON_SESSION_ID_CONTEXT,
    nginx_session_id_context,
)
from ..errors import ConfigError
from ..inspect_input import MAX_INPUT_LEN, looks_inline
from ..inspection import MAX_SID_CTX_LEN, Inspection, inspect_ticket, iso, read_input, sid_ctx_label
from ..scope import scoped
from ..session import SessionInfo
from ._common import open_cli_store, scope_option, store_option

#: Exit statuses, documented in --help.
EXIT_RESUME = 0
EXIT_NO_RESUME = 1


_SERVERS = {"python": PYTHON_SESSION_ID_CONTEXT, "haproxy": HAPROXY_SESSION_ID_CONTEXT}


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (and backslashes doubled).

    Session fields (SNI, ALPN, certificate names) come from the network: a
    terminal must never receive their control or escape sequences.
    """
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else
                       f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def _echo(line: str) -> None:
    click.echo(printable(line))


def _shown(argument: str) -> str:
    """An INPUT argument, short and escaped, for an error message."""
    short = argument if len(argument) <= 40 else argument[:37] + "..."
    return repr(printable(short))


def _read(argument: str) -> bytes:
    """INPUT's bytes: '-' is stdin, an existing path a file, else a ticket given inline."""
    hint = f"INPUT {_shown(argument)}"
    try:
        if argument == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_LEN + 1)
        elif os.path.exists(argument) or not looks_inline(argument):
            with open(argument, "rb") as f:
                data = f.read(MAX_INPUT_LEN + 1)
        else:
            return argument.encode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise click.BadParameter("no such file, nor a session PEM or a ticket in hex or "
                                 "base64 given inline", param_hint=hint) from None
    except OSError as exc:
        raise click.BadParameter(f"cannot read it: {exc.strerror or exc}",
                                 param_hint=hint) from None
    if len(data) > MAX_INPUT_LEN:
        raise click.BadParameter(f"more than {MAX_INPUT_LEN} bytes: no session file or "
                                 f"ticket is that large", param_hint=hint)
    return data


def _nginx_sid_ctx(paths: str) -> bytes:
    """``nginx:CERT[:CLIENT_CA]``: the context nginx computes from those files.

    CERT alone when it names an existing file (a path may hold a colon);
    otherwise the last colon separates CLIENT_CA.
    """
    cert, client_ca = paths, None
    if not os.path.isfile(paths) and ":" in paths:
        cert, client_ca = paths.rsplit(":", 1)
    if not cert or client_ca == "":
        raise click.BadParameter("expected nginx:CERT or nginx:CERT:CLIENT_CA (the files "
                                 "of ssl_certificate and ssl_client_certificate)")
    try:
        return nginx_session_id_context(cert, client_ca)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _server_sid_ctx(_ctx: click.Context, _param: click.Parameter,
                    value: str | None) -> bytes | None:
    if value is None:
        return None
    if value.lower() in _SERVERS:
        return _SERVERS[value.lower()]
    if value.lower().startswith("nginx:"):
        return _nginx_sid_ctx(value[len("nginx:"):])
    try:
        sid_ctx = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter("expected 'python', 'haproxy', 'nginx:CERT[:CLIENT_CA]' "
                                 "or a session id context in hex") from None
    if len(sid_ctx) > MAX_SID_CTX_LEN:  # SSL_CTX_set_session_id_context refuses more
        raise click.BadParameter(f"a session id context is at most {MAX_SID_CTX_LEN} "
                                 f"bytes, this is {len(sid_ctx)}")
    return sid_ctx


def _session_lines(info: SessionInfo, indent: str = "  ") -> list[str]:
    lines = [
        f"{indent}protocol      {info.protocol}",
        f"{indent}cipher        {info.cipher_label}",
        f"{indent}created       {iso(info.created_at)}",
        f"{indent}timeout       {info.timeout}s (until {iso(info.expires_at)})",
        f"{indent}sni           {info.sni or '-'}",
        f"{indent}alpn          "
        f"{info.alpn.decode('latin-1') if info.alpn is not None else '-'}",
        f"{indent}peer cert     "
        f"{('yes: ' + (info.peer_subject or '?')) if info.peer_certificate else 'no'}",
        f"{indent}secret        {info.secret_len} bytes (never shown)",
        f"{indent}sid context   {sid_ctx_label(info.sid_ctx)}",
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
    _echo(f"ticket        {result.ticket_len} bytes ({form}), key name {name}")
    if result.key is not None:
        k = result.key
        state = result.key_state.value if result.key_state else "?"
        _echo(f"key           in {store_url}: {state}, {k.size}-byte key, active "
                   f"{iso(k.activates_at)} .. {iso(k.retires_at)}, accepted until "
                   f"{iso(k.expires_at)}")
    else:
        _echo(f"key           not in {store_url}")
    _echo(f"verdict       {result.verdict.value}")
    _echo(f"reason        {result.reason}")
    if result.server_sid_ctx is not None:
        _echo(f"server        session id context {sid_ctx_label(result.server_sid_ctx)}")
    if result.resumes:
        _echo(f"callback      answers {int(result.answer)} at {iso(result.now)}")
    if result.session is not None:
        _echo("session (ticket state):")
        for line in _session_lines(result.session):
            _echo(line)
    if result.client_session is not None:
        _echo("client session (input file):")
        for line in _session_lines(result.client_session):
            _echo(line)


@click.command("inspect")
@click.argument("input_path", metavar="INPUT")
@store_option
@click.option("--server", "sid_ctx", metavar="python|haproxy|nginx:CERT[:CLIENT_CA]|HEX",
              default=None, callback=_server_sid_ctx,
              help="Judge for this server's session id context: 'python' (Python's ssl, "
                   "b'Python\\0'), 'haproxy', 'nginx:CERT' for an nginx server block "
                   "whose ssl_certificate is the file CERT, 'nginx:CERT:CLIENT_CA' when "
                   "it also verifies clients (ssl_verify_client on or optional) with "
                   "ssl_client_certificate CLIENT_CA, or the context in hex (the output "
                   "shows each session's).  OpenSSL resumes a session only in the "
                   "context it was made in.  Without it the context is shown, not "
                   "checked.")
@scope_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def inspect_cmd(ctx: click.Context, input_path: str, store_url: str | None,
                sid_ctx: bytes | None, scope: str | None, as_json: bool) -> None:
    """Explain whether a server with this ring would resume a session ticket.

    INPUT is a session file written by 'openssl s_client -sess_out FILE' (PEM,
    or DER), a file holding a ticket in hex or base64, such a ticket given
    inline, or '-' to read any of these from stdin (at most 512 KiB).  Other
    input (a private key, a certificate, a keyring, prose) is refused with
    what it looks like.

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
    data = _read(input_path)
    parsed = read_input(data)
    store = open_cli_store(store_url)
    ring = scoped(store.read(), scope)
    result = inspect_ticket(parsed.ticket, ring, time.time(),
                            client_session=parsed.client_session, sid_ctx=sid_ctx)
    if as_json:
        doc = result.to_dict()
        doc["store"] = store.url
        doc["scope"] = scope
        doc["input_form"] = parsed.form
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_text(result, f"{store.url} (scope {scope})" if scope else store.url, parsed.form)
    ctx.exit(EXIT_RESUME if result.resumes else EXIT_NO_RESUME)


def register(group: click.Group) -> None:
    group.add_command(inspect_cmd)
