"""``stek export``: write the ring in a server's own key-file layout."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from ..export import FORMATS, export, is_directory_format, render
from ..scope import scoped
from ._common import open_cli_store, scope_option, store_option

_LAYOUTS = {
    "nginx": "DIR: one <name>.key per key (80: name|HMAC|AES, 48: name|AES|HMAC) and "
             "tickets.conf to include",
    "haproxy": "FILE: tls-ticket-keys, 3 base64 lines (previous, encrypting, next)",
    "apache": "FILE: SSLSessionTicketKeyFile, one 48-byte key (48-byte rings only)",
    "envoy": "DIR: one 80-byte <name>.key per key and session_ticket_keys.yaml",
    "openssl": "FILE: raw name|HMAC|AES records, encrypting key first",
}


@click.command("export")
@store_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="Target layout: " + "; ".join(f"{k} = {v}" for k, v in _LAYOUTS.items()))
@click.option("--out", type=click.Path(dir_okay=True, path_type=Path), default=None,
              help="Where to write (a directory for nginx and envoy).  Without it, "
                   "single-file formats go to stdout, but never to a terminal.")
@scope_option
def export_cmd(store_url: str | None, fmt: str, out: Path | None, scope: str | None) -> None:
    """Write the ring's live keys the way a TLS server reads them.

    Files are created with mode 0600 and replaced atomically, and only when
    their content changes; run the server's reload only when this reports a
    change (or let 'stek agent --export FORMAT:PATH --reload CMD' do it).
    See docs/exporters.md for each layout and its limits.
    """
    store = open_cli_store(store_url)
    ring = scoped(store.read(), scope)
    now = time.time()
    if out is None:
        if is_directory_format(fmt):
            raise click.UsageError(f"--format {fmt} writes several files: give --out DIR")
        if sys.stdout.isatty():
            raise click.UsageError("refusing to print key material to a terminal: give --out "
                                   "PATH or redirect stdout")
        rendered = render(fmt, ring, now, Path.cwd())
        sys.stdout.buffer.write(rendered.content)
        sys.stdout.buffer.flush()
        return
    result = export(fmt, ring, now, out)
    if result.created is not None:
        click.echo(f"created directory {result.created} (mode 0700)", err=True)
    for p in result.written:
        click.echo(f"wrote {p}", err=True)
    for p in result.removed:
        click.echo(f"removed {p}", err=True)
    state = "changed" if result.changed else "unchanged"
    enc = ring.encrypting_key(now)
    shown = f"scope {scope} " if scope else ""
    click.echo(f"{fmt} {shown}keys {state} in {result.path} (generation {ring.generation}, "
               f"encrypting key {enc.name.hex() if enc else 'none'})")


def register(group: click.Group) -> None:
    group.add_command(export_cmd)
