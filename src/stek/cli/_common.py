"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .._duration import parse_duration
from ..errors import ConfigError
from ..stores import ENV_VAR, KeyStore, default_url, open_store

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"],
                                    "max_content_width": 100}
F = TypeVar("F", bound=Callable[..., Any])


def store_option(f: F) -> F:
    return click.option(
        "--store", "store_url", metavar="URL", envvar=ENV_VAR, default=None,
        help=f"Key store: file:PATH, redis://HOST:PORT/DB, etcd://HOST:PORT/PREFIX "
             f"[env {ENV_VAR}; default {default_url()}]",
    )(f)


def open_cli_store(url: str | None, **options: Any) -> KeyStore:
    return open_store(url or default_url(), **options)


class Duration(click.ParamType):  # type: ignore[type-arg]
    """30s, 10m, 1h, 2d (or plain seconds)."""

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


def setup_logging(verbose: int = 0) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
