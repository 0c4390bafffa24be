"""``stek agent``."""

from __future__ import annotations

import click

from ..agent import Agent
from ._common import open_cli_store, setup_logging, store_option


@click.command()
@store_option
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def agent(store_url: str | None, verbose: int) -> None:
    """Run the rotation daemon in the foreground.

    Creates the ring with the default policy if the store is empty, rotates
    it on schedule, logs every change (never key bytes), retries with backoff
    while the store is unreachable, and stops cleanly on SIGTERM or SIGINT.
    """
    setup_logging(verbose)
    a = Agent(open_cli_store(store_url))
    a.install_signal_handlers()
    a.run()


def register(group: click.Group) -> None:
    group.add_command(agent)
