"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .._duration import parse_duration, parse_seconds
from ..errors import ConfigError
from ..stores import ENV_VAR, KeyStore, default_url, open_store
from ..stores.file import default_path

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"],
                                    "max_content_width": 100}
F = TypeVar("F", bound=Callable[..., Any])


#: click context ``meta`` keys where the sealing options land (they are not
#: passed to the commands, so every command taking --store gets them unchanged).
META_KEK_FILE = "stek.kek_file"
META_INSECURE = "stek.insecure_plaintext"


def to_meta(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and value is not False:
            ctx.meta[key] = value
        return value

    return store


#: Every store URL form, for each option that takes one (the grammar: stek.stores.url).
STORE_URLS = (
    "file:PATH, redis://HOST:PORT/DB, rediss://HOST:PORT/DB, "
    "redis+sentinel://HOSTS/MASTER/DB, rediss+sentinel://HOSTS/MASTER/DB, "
    "unix:///PATH/TO/redis.sock?db=N, etcd://HOSTS/PREFIX, etcds://HOSTS/PREFIX "
    "(HOSTS: HOST:PORT[,HOST:PORT...]; rediss and etcds: TLS).  A password goes in "
    "a file (?password_file=PATH), never in the URL"
)


def _sealing_options(f: F) -> F:
    f = click.option(
        "--insecure-plaintext", is_flag=True, default=False, expose_value=False,
        callback=to_meta(META_INSECURE),
        help="Let a shared store (Redis, etcd) hold the keys UNSEALED, readable by anyone "
             "who can read the store.  Never in production.",
    )(f)
    return click.option(
        "--kek-file", metavar="PATH", default=None, expose_value=False,
        callback=to_meta(META_KEK_FILE),
        help="Key-encryption key that seals the ring in a shared store (made by "
             "'stek kek PATH') [env STEK_KEK_FILE, or STEK_KEK in base64].",
    )(f)


def store_option(f: F) -> F:
    """--store URL (else $STEK_STORE, else the default file) and the sealing options."""
    # An empty $STEK_STORE is refused by default_url(), not ignored (click skips
    # an empty variable, so None reaches open_cli_store).
    return click.option(
        "--store", "store_url", metavar="URL", envvar=ENV_VAR, default=None,
        help=f"Key store: {STORE_URLS} [env {ENV_VAR}; default file:{default_path()}]",
    )(_sealing_options(f))


def _check_scope(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from ..errors import ConfigError
    from ..scope import check_scope

    try:
        return check_scope(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def scope_option(f: F) -> F:
    """--scope NAME: the key scope (stek.scope) whose derived keys the command uses."""
    return click.option(
        "--scope", "scope", metavar="NAME", default=None, callback=_check_scope,
        help="Use the keys of this key scope, derived from the ring's (docs/trust.md): "
             "servers in different scopes never resume each other's tickets.  Default: the "
             "ring's own keys.",
    )(f)


def lookup_store_option(f: F) -> F:
    """--store URL for a command that uses a store only when asked: no $STEK_STORE, no default."""
    return click.option(
        "--store", "store_url", metavar="URL", default=None,
        help=f"Look each key name up in this store's ring.  Without --store no store is "
             f"used: no default, and {ENV_VAR} is not read.  URL: {STORE_URLS}",
    )(_sealing_options(f))


def sealing_options() -> dict[str, Any]:
    """The --kek-file / --insecure-plaintext given to the running command, as store options."""
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    options: dict[str, Any] = {}
    if meta.get(META_KEK_FILE):
        options["kek_file"] = meta[META_KEK_FILE]
    if meta.get(META_INSECURE):
        options["insecure_plaintext"] = True
    return options


def open_cli_store(url: str | None, **options: Any) -> KeyStore:
    """Open the store; shared stores get the command's sealing options.

    File and memory stores take no options (open_store passes them only to
    shared stores), so the flags are harmless there.
    """
    for key, value in sealing_options().items():
        options.setdefault(key, value)
    store = open_store(default_url() if url is None else url, **options)
    if getattr(getattr(store, "sealer", None), "sealed", True) is False:
        click.echo(f"stek: WARNING: {store.url} holds session ticket keys UNSEALED "
                   f"(--insecure-plaintext): anyone who reads the store can decrypt "
                   f"resumed sessions", err=True)
    return store


class Duration(click.ParamType):  # type: ignore[type-arg]
    """30s, 10m, 1h, 2d: a unit is required (a bare number is refused)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


class Seconds(click.ParamType):  # type: ignore[type-arg]
    """500ms, 1.5s, 2m: fractional seconds, a unit required."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_seconds(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


SECONDS = Seconds()


def setup_logging(verbose: int = 0) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
