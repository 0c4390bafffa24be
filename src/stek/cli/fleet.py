"""``stek kek``, ``stek rekey``, ``stek migrate``: running a ring on a fleet store."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from ..errors import StekError
from ..keyring import Keyring
from ..stores import KeyStore
from ..stores.sealing import Sealer, read_kek_file, write_kek_file
from ..stores.shared import SharedStore
from ._common import (
    META_INSECURE,
    META_KEK_FILE,
    STORE_URLS,
    open_cli_store,
    store_option,
    to_meta,
)


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file (its KEK is lost).")
def kek(path: str, force: bool) -> None:
    """Write a new key-encryption key to PATH (mode 0600, atomically).

    Shared stores (Redis, etcd) hold the ring sealed with AES-256-GCM under
    this key: give it to every host as --kek-file PATH or $STEK_KEK_FILE.
    Only its public id is printed, never the key.
    """
    key = write_kek_file(path, force=force)
    click.echo(f"wrote key-encryption key {Sealer(key).kek_id} to {path} (mode 0600)")


def _names(ring: Keyring) -> list[str]:
    return [k.name.hex() for k in ring.keys]


@click.command()
@store_option
@click.option("--new-kek-file", metavar="PATH", required=True, type=click.Path(dir_okay=False),
              help="The KEK to seal under from now on (first key of the file; further keys "
                   "in it still open).")
@click.option("--format-1", "format_1", is_flag=True,
              help="Also re-seal a value sealed in the old format 1, if its keys show it is "
                   "current; prints every key it re-seals.")
def rekey(store_url: str | None, new_kek_file: str, format_1: bool) -> None:
    """Re-seal the ring of a shared store under a new key-encryption key.

    The current KEK comes from --kek-file or the environment (or give
    --insecure-plaintext to seal a ring stored unsealed).  The ring's bytes
    are carried over unchanged, in one compare-and-set, so no key is lost.
    Roll out a KEK file holding the new key first and the old one second,
    then rekey, then drop the old key.

    A value in the old format 1 binds no ring and no generation, so an old
    value put back looks the same: it is refused unless --format-1, and then
    re-sealed only if a key of it activated within the policy's rotate_every.
    """
    store = open_cli_store(store_url)
    if not isinstance(store, SharedStore):
        raise StekError(f"{store.url} is not a shared store: only Redis and etcd rings are sealed")
    keks = read_kek_file(new_kek_file)
    new = Sealer(keks[0], tuple(keks[1:]))
    old_id = store.sealer.kek_id
    before = store.reseal(new, format_1=format_1)
    after = store.read()  # now opened with the new KEK
    if after.generation == before.generation and _names(after) != _names(before):
        raise StekError(f"{store.url}: the re-sealed ring does not match; check 'stek status'")
    click.echo(f"re-sealed {len(before)} key(s) in {store.url} under KEK {new.kek_id} "
               f"(was {old_id}), generation {before.generation}")
    if format_1:
        # Show what went into format 2, so that an operator sees which keys
        # (and how old) every reader now loads.
        for key in before.keys:
            click.echo(f"  key {key.name.hex()} activates {_iso(key.activates_at)} "
                       f"retires {_iso(key.retires_at)}")


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(ring: Keyring) -> str:
    return f"{len(ring)} key(s), generation {ring.generation}"


@click.command()
@click.option("--from", "src_url", metavar="URL", required=True,
              help=f"Store to copy from: {STORE_URLS}")
@click.option("--to", "dst_url", metavar="URL", required=True,
              help="Store to copy to (the same URL forms).")
@click.option("--force", is_flag=True, help="Replace a non-empty destination ring.")
@click.option("--kek-file", metavar="PATH", default=None, expose_value=False,
              callback=to_meta(META_KEK_FILE),
              help="KEK of the shared store(s) [env STEK_KEK_FILE / STEK_KEK].")
@click.option("--to-kek-file", metavar="PATH", default=None,
              help="KEK for the destination, if it differs from --kek-file.")
@click.option("--insecure-plaintext", is_flag=True, default=False, expose_value=False,
              callback=to_meta(META_INSECURE),
              help="Allow shared stores without a KEK (keys stored UNSEALED).")
def migrate(src_url: str, dst_url: str, force: bool, to_kek_file: str | None) -> None:
    """Copy a ring between two stores (file:, redis://, etcd://), keys and policy.

    A destination that already holds a ring is left alone unless --force.
    The copy is one atomic write on the destination, sealed for the
    destination (a sealed value names the ring it belongs to); the source is
    untouched.
    """
    src = open_cli_store(src_url)
    dst_opts: dict[str, Any] = {"kek_file": to_kek_file} if to_kek_file else {}
    dst: KeyStore = open_cli_store(dst_url, **dst_opts)
    try:
        ring = src.read()
        def mutate(current: Keyring | None) -> Keyring:
            if current is not None and not force:
                raise StekError(
                    f"{dst.url} already holds a ring ({_describe(current)}); "
                    f"use --force to replace it"
                )
            # Readers refuse a generation older than one they have seen, so a
            # replaced ring continues the destination's count.  The write seals
            # it for the destination's own ring id (stores/sealing.py).
            generation = ring.generation if current is None else \
                max(ring.generation, current.generation + 1)
            return Keyring(ring.policy, ring.keys, generation)

        # A destination that cannot be opened (wrong KEK, corrupt) raises
        # inside update(), before anything is written, even with --force.
        stored = dst.update(mutate)
        if _names(stored) != _names(ring):
            raise StekError(f"{dst.url}: the copy does not match the source")
        click.echo(f"copied {_describe(ring)} from {src.url} to {dst.url}")
    finally:
        src.close()
        dst.close()


def register(group: click.Group) -> None:
    group.add_command(kek)
    group.add_command(rekey)
    group.add_command(migrate)
