"""The ``stek`` command line: thin commands over the library.

User mistakes and store errors print one line (``stek: error: ...``) and exit
with status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import StekError
from ._common import CONTEXT_SETTINGS

#: Modules that each add commands to the group (each defines ``register(group)``).
_COMMAND_MODULES = (
    "stek.cli.core",
    "stek.cli.agent",
    "stek.cli.fleet",
    "stek.cli.export",
    "stek.cli.inspect",
    "stek.cli.probe",
)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="stek")
def cli() -> None:
    """Manage TLS session ticket encryption keys (STEKs).

    A ring of keys is kept in a store (a local file by default; select another
    with --store URL or $STEK_STORE).  Keys are pending, then active (they seal
    new tickets), then decrypt-only (their tickets still resume and are
    re-issued), then dropped.  Run 'stek init' once, then 'stek agent' (or
    'stek rotate' from cron) to keep the ring current.
    """


for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(cli)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, mapping errors to one line and an exit status."""
    try:
        rv = cli.main(args=argv, prog_name="stek", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("stek: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except StekError as exc:
        click.echo(f"stek: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
