"""``stek init``, ``stek rotate``, ``stek status``."""

from __future__ import annotations

import json
import time
import warnings
from typing import Any

import click

from .._duration import format_duration
from ..errors import NotInitialized
from ..keyring import Keyring
from ..mirror import refuse_rotation
from ..rotation import init_ring, rotate
from ..schedule import Policy, State, StekWarning, next_change, state_of
from ..stores import KeyStore
from ..stores.base import StoreHealth, health_of
from ._common import DURATION, open_cli_store, setup_logging, store_option


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@click.command()
@store_option
@click.option("--rotate-every", type=DURATION, default="1h", show_default=True,
              help="How long each key seals new tickets.")
@click.option("--accept-for", type=DURATION, default="11h", show_default=True,
              help="How long a retired key still opens tickets (and re-issues them).")
@click.option("--publish-ahead", type=DURATION, default="10m", show_default=True,
              help="How long before activation a key is published; must exceed the time "
                   "the slowest server takes to pick up a change.")
@click.option("--key-size", type=click.Choice(["80", "48"]), default="80", show_default=True,
              help="80: AES-256 + 32-byte HMAC key. 48: AES-128 + 16-byte HMAC key "
                   "(Apache, old peers; caps resumed sessions at 128-bit security).")
@click.option("--force", is_flag=True, help="Replace the policy of an existing ring (keys kept).")
def init(store_url: str | None, rotate_every: int, accept_for: int, publish_ahead: int,
         key_size: str, force: bool) -> None:
    """Create the keyring with its rotation policy and first keys.

    A ticket is accepted for at most ROTATE_EVERY + ACCEPT_FOR after it is
    issued (12h by default): that sum is the forward-secrecy window, capped at
    7d (RFC 8446) with a warning above 48h.
    """
    setup_logging()
    policy = Policy(rotate_every, accept_for, publish_ahead, int(key_size))
    for note in policy.warnings:
        click.echo(f"stek: warning: {note}", err=True)
    store = open_cli_store(store_url)
    refuse_rotation(store, "run 'stek init' on the fleet store it mirrors")
    if not force and _same_policy(store, policy):
        # The ring someone (stek agent, a rotate=True server) already made with
        # this very policy: nothing to do, as for 'stek rotate' run twice.
        click.echo(f"keyring already exists in {store.url} with this policy: unchanged "
                   f"(rotate every {format_duration(rotate_every)}, accept for "
                   f"{format_duration(accept_for)}, publish {format_duration(publish_ahead)} "
                   f"ahead)")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StekWarning)
        result = init_ring(store, policy, force=force)
    verb = "created" if result.created else "updated"
    click.echo(f"{verb} keyring in {store.url}: {len(result.ring)} key(s), rotate every "
               f"{format_duration(rotate_every)}, accept for {format_duration(accept_for)}, "
               f"publish {format_duration(publish_ahead)} ahead")


def _same_policy(store: KeyStore, policy: Policy) -> bool:
    try:
        return store.read().policy == policy
    except NotInitialized:
        return False


@click.command("rotate")
@store_option
def rotate_cmd(store_url: str | None) -> None:
    """Add the keys that are due and drop expired ones (idempotent, cron-safe).

    Running it twice, or on many hosts at once, leaves the ring that one run
    would: each rotation slot gets exactly one key.
    """
    store = open_cli_store(store_url)
    refuse_rotation(store)
    result = rotate(store)
    for k in result.added:
        click.echo(f"added {k.name.hex()} active {iso(k.activates_at)} .. {iso(k.retires_at)}, "
                   f"accepted until {iso(k.expires_at)}")
    for name in result.dropped:
        click.echo(f"dropped {name.hex()}")
    if not result.changed:
        click.echo(f"nothing to do (generation {result.ring.generation})")


def status_doc(ring: Keyring, url: str, now: float) -> dict[str, Any]:
    return {
        "store": url,
        "generation": ring.generation,
        "now": iso(now),
        "policy": ring.policy.to_dict(),
        "next_change": iso(next_change(ring.keys, ring.policy, now)),
        "keys": [
            {
                "name": k.name.hex(),
                "state": state_of(k, now).value,
                "size": k.size,
                "activates_at": iso(k.activates_at),
                "retires_at": iso(k.retires_at),
                "expires_at": iso(k.expires_at),
            }
            for k in ring.keys
        ],
        # The names `stek revoke` took out, each until its key would have
        # expired (docs/fleet.md, "A key may have leaked"); one whose instant
        # has passed is left out as Keyring.without forgets it (the stored
        # ring may still list it until its next change).
        "revoked": [
            {"name": name.hex(), "expires_at": iso(t)}
            for name, t in ring.without({}, now).revoked
        ],
    }


def health_lines(h: StoreHealth) -> list[str]:
    """The store's servers as stek sees them: reachable, leader/primary, TLS, user."""
    if h.engine in ("file", "memory"):
        return []
    auth = f"authenticated as {h.user}" if h.user else "no authentication"
    lines = [f"health      {h.engine}, TLS {'on' if h.tls else 'OFF'}, {auth}"
             + (f", {h.replicas} replica(s)" if h.replicas is not None else "")]
    for e in h.endpoints:
        state = "up" if e.reachable else f"DOWN ({e.error.rpartition(': ')[2]})"
        lead = " *" if h.primary and e.address == h.primary else ""
        lines.append(f"  {e.address:24} {e.role or '-':10} {state}{lead}")
    if h.primary:
        lines.append(f"  {'primary' if h.engine.startswith('redis') else 'leader'}: {h.primary}")
    return lines


_MARK = {State.PENDING: ".", State.ACTIVE: "#", State.DECRYPT_ONLY: "-"}


def timeline(ring: Keyring, now: float, width: int = 48) -> list[str]:
    """One bar per key: '#' active window, '-' decrypt-only, '|' now."""
    if not ring.keys:
        return []
    start = min(min(k.activates_at for k in ring.keys), now)
    end = max(max(k.expires_at for k in ring.keys), now + 1)
    span = end - start

    def col(t: float) -> int:
        return min(width - 1, max(0, int((t - start) * width / span)))

    lines = []
    now_col = col(now)
    for k in ring.keys:
        cells = [" "] * width
        for c in range(col(k.activates_at), col(k.retires_at) + 1):
            cells[c] = "#"
        for c in range(col(k.retires_at) + 1, col(k.expires_at) + 1):
            cells[c] = "-"
        cells[now_col] = "|"
        lines.append(f"  {k.name.hex()[:8]} [{''.join(cells)}]")
    lines.append(f"  {'':8}  {iso(start):<{width // 2}}{iso(end):>{width - width // 2}}")
    return lines


@click.command()
@store_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(store_url: str | None, as_json: bool) -> None:
    """Show the ring: each key's name, state and windows (never key bytes).

    Then the names of revoked keys the ring still remembers, each with the
    instant its key would have expired, when the ring forgets it.
    """
    store = open_cli_store(store_url)
    ring = store.read()
    now = time.time()
    doc = status_doc(ring, store.url, now)
    health = health_of(store)
    doc["store_health"] = health.to_dict()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    p = ring.policy
    click.echo(f"store       {doc['store']}  (generation {ring.generation})")
    click.echo(f"policy      rotate every {format_duration(p.rotate_every)}, accept for "
               f"{format_duration(p.accept_for)}, publish {format_duration(p.publish_ahead)} "
               f"ahead, {p.key_size}-byte keys")
    click.echo(f"now         {doc['now']}   next change {doc['next_change']}")
    for line in health_lines(health):
        click.echo(line)
    click.echo("")
    click.echo(f"  {'name':32}  {'state':12}  {'activates':20}  {'retires':20}  expires")
    for k in doc["keys"]:
        click.echo(f"  {k['name']:32}  {k['state']:12}  {k['activates_at']:20}  "
                   f"{k['retires_at']:20}  {k['expires_at']}")
    if not doc["keys"]:
        click.echo("  (no keys: run 'stek rotate')")
    if doc["revoked"]:
        click.echo("")
        click.echo(f"  {'revoked':32}  expires")
        for r in doc["revoked"]:
            click.echo(f"  {r['name']:32}  {r['expires_at']}")
    click.echo("")
    for line in timeline(ring, now):
        click.echo(line)
    states = {state_of(k, now) for k in ring.keys}
    if State.ACTIVE not in states:
        click.echo("warning: no active key: servers issue no tickets until 'stek rotate' runs",
                   err=True)


def register(group: click.Group) -> None:
    group.add_command(init)
    group.add_command(rotate_cmd)
    group.add_command(status)
