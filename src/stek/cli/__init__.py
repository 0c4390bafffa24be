"""The ``stek`` command line: thin commands over the library.

Every error prints one line, ``stek: error: ...``, whatever the command: click's
usage errors (bad option, bad value, missing option) and stek's own errors
alike, all formatted here (:func:`main`), never per command.  Exit statuses:
2 for a usage or configuration mistake, 1 for an operational error (the
store cannot be read or written, is corrupt, or the key-encryption key is
wrong; a file cannot be written).  A command whose status 1 means something
of its own (``stek inspect``: "would not resume"; ``stek probe``: "some pair
does not resume") exits 2 for both.
Tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .. import __version__
from ..errors import StekError, StoreError
from ._common import CONTEXT_SETTINGS

#: Modules that each add commands to the group (each defines ``register(group)``).
_COMMAND_MODULES = (
    "stek.cli.core",
    "stek.cli.agent",
    "stek.cli.fleet",
    "stek.cli.export",
    "stek.cli.inspect_cmd",
    "stek.cli.probe",
    "stek.cli.revoke",
)


#: Exit statuses (README: "User mistakes ... exit with status 2").
EXIT_USAGE = 2
EXIT_FAILED = 1
#: Commands whose exit status 1 has a meaning of its own.
_OWN_STATUS_1 = frozenset({"inspect", "probe"})


class CommandFailed(click.ClickException):
    """A StekError raised by a command, with the exit status it maps to."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc, unused-ignore]  # click's is a class default


def exit_status(exc: StekError, command: str | None) -> int:
    """2 for a mistake in what was asked; 1 for a store or file that failed (see above)."""
    operational = isinstance(exc, StoreError) or isinstance(exc.__cause__, OSError)
    if not operational or command in _OWN_STATUS_1:
        return EXIT_USAGE
    return EXIT_FAILED


class StekGroup(click.Group):
    """Maps a command's StekError to its exit status (the command's name decides)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StekError as exc:
            raise CommandFailed(str(exc), exit_status(exc, ctx.invoked_subcommand)) from exc


def one_line(exc: click.ClickException) -> str:
    """``stek: error: ...`` on one line, naming the command and its --help for usage errors."""
    message = " ".join(exc.format_message().split())
    if isinstance(exc, click.UsageError) and exc.ctx is not None:
        message = f"{message} (see '{exc.ctx.command_path} --help')"
    return f"stek: error: {message}"


@click.group(cls=StekGroup, context_settings=CONTEXT_SETTINGS)
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
        click.echo(one_line(exc), err=True)
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except StekError as exc:  # raised while parsing, before a command ran
        click.echo(f"stek: error: {' '.join(str(exc).split())}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
