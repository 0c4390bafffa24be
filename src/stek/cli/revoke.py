"""``stek revoke``: take keys that may have leaked out of the ring, now."""

from __future__ import annotations

import click

from ..errors import ConfigError
from ..keys import NAME_LEN
from ..mirror import refuse_rotation
from ..rotation import revoke
from ._common import open_cli_store, store_option


def parse_name(text: str) -> bytes:
    """A key name as ``stek status`` shows it: 32 hex digits."""
    try:
        name = bytes.fromhex(text)
    except ValueError:
        name = b""
    if len(name) != NAME_LEN:
        raise ConfigError(f"key name {text[:40]!r} is not {2 * NAME_LEN} hex digits "
                          f"(as 'stek status' shows it)")
    return name


@click.command("revoke")
@store_option
@click.option("--all", "everything", is_flag=True,
              help="Revoke every key in the ring (a fresh key is made active at once).")
@click.argument("names", nargs=-1, metavar="[NAME]...")
def revoke_cmd(store_url: str | None, everything: bool, names: tuple[str, ...]) -> None:
    """Take keys that may have leaked out of the ring at once (emergency revocation).

    NAME is a key's name in hex, as 'stek status' lists it; --all takes every
    key.  The keys leave the ring and are remembered as revoked until they
    would have expired, the generation moves forward, and a fresh key is made
    active at once when the active one goes.  Servers, mirrors and 'stek agent'
    targets follow within their usual propagation delay; from then on a
    ticket sealed under a revoked key gets a full handshake.  Sessions resumed
    before that are not undone (see docs/fleet.md, "A key may have leaked").
    """
    if everything == bool(names):
        raise ConfigError("name the keys to revoke, or give --all (not both)")
    wanted = None if everything else [parse_name(n) for n in names]
    store = open_cli_store(store_url)
    refuse_rotation(store, "revoke on the fleet store it mirrors")
    result = revoke(store, wanted)
    for name in result.revoked:
        click.echo(f"revoked {name.hex()}")
    for k in result.added:
        click.echo(f"added {k.name.hex()}")
    click.echo(f"keyring generation {result.ring.generation}: {len(result.ring)} key(s)")


def register(group: click.Group) -> None:
    group.add_command(revoke_cmd)
