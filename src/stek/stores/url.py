"""One grammar for every store URL, and the one scrubbed form stek ever shows.

A URL is ``SCHEME://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...][/PATH][?OPTIONS]``
(``file:PATH`` and ``memory:`` aside).  Several hosts name several etcd
members or Redis Sentinels.  Credentials never need to be on a command line:

* ``password_file=PATH`` (and ``sentinel_password_file=``, ``ssl_password_file=``)
  name a file holding the secret (trailing newline stripped);
* ``$STEK_STORE_PASSWORD`` (``$STEK_STORE_SENTINEL_PASSWORD``) are read when
  no file is named;
* ``user:password@`` still works for programs that build the URL in memory.

Secrets spelt in the query string (``?password=``, ``?ssl_password=``...) are
refused: a query string ends up in logs.  :attr:`StoreURL.display` (and
:func:`scrub` for text that did not parse) is the only form ever printed: no
password, no secret option, whatever the input looked like.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode

from ..errors import ConfigError

PASSWORD_ENV = "STEK_STORE_PASSWORD"  # noqa: S105 - a variable name
SENTINEL_PASSWORD_ENV = "STEK_STORE_SENTINEL_PASSWORD"  # noqa: S105

#: Query options whose value is a secret: refused, with the ``_file`` form to use instead.
SECRET_OPTIONS = frozenset({"password", "ssl_password", "sentinel_password", "token", "pass"})
#: Options naming a file that holds a secret: their value (a path) is shown.
SECRET_FILES = {
    "password_file": ("password", PASSWORD_ENV),
    "sentinel_password_file": ("sentinel_password", SENTINEL_PASSWORD_ENV),
    "ssl_password_file": ("ssl_password", None),
}
#: The largest credential file stek reads (a password, not a payload).
MAX_SECRET = 4096

_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:" + "|".join(sorted(SECRET_OPTIONS)) + r")=)[^&#]*")


def scrub(text: str) -> str:
    """``text`` (a URL, parsed or not) with every password and secret option removed."""
    # The password may hold an unencoded "/": the userinfo is everything
    # up to the last "@" before the query.
    head, sep, query = text.partition("?")
    scheme_end = head.find("://")
    if "@" in head and scheme_end >= 0:
        userinfo, _, rest = head[scheme_end + 3:].rpartition("@")
        user = userinfo.partition(":")[0]
        head = f"{head[:scheme_end + 3]}{user + '@' if user else ''}{rest}"
    return head + (_SECRET_QUERY.sub(r"\1***", sep + query) if sep else "")


def read_secret(path: str, what: str) -> str:
    """The secret in ``path``: its text without the trailing newline."""
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_SECRET + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {str(p)!r}: {exc.strerror}") from None
    if len(data) > MAX_SECRET:
        raise ConfigError(f"the {what} file {str(p)!r} is larger than {MAX_SECRET} bytes")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} file {str(p)!r} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"the {what} file {str(p)!r} is empty")
    return text


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL: what to connect to, and how to show it."""

    scheme: str
    #: ``(host, port)`` pairs; port None when the URL gives none.
    hosts: tuple[tuple[str, int | None], ...]
    #: The path after the hosts, percent-decoded, with its leading "/".
    path: str
    #: Non-secret options from the query string (the last value of each).
    options: dict[str, str]
    user: str | None
    password: str | None = field(default=None, repr=False)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def host_list(self, default_port: int) -> list[tuple[str, int]]:
        return [(h, p if p is not None else default_port) for h, p in self.hosts]

    def secret(self, name: str) -> str | None:
        return self.secrets.get(name)

    def all_secrets(self) -> tuple[str, ...]:
        """Every secret value, as typed and percent-encoded, to scrub from foreign error text."""
        vals = [v for v in (self.password, *self.secrets.values()) if v]
        return tuple(s for v in vals for s in {v, quote(v, safe="")})

    @property
    def display(self) -> str:
        """The URL as stek shows it: hosts, user name, path and options; no secret."""
        hosts = ",".join(_show_host(h, p) for h, p in self.hosts)
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        query = f"?{urlencode(sorted(self.options.items()), safe='/:')}" if self.options else ""
        return f"{self.scheme}://{user}{hosts}{quote(self.path, safe='/')}{query}"

    def take(self, allowed: set[str]) -> None:
        """Refuse options this store does not know (a typo must not be silently dropped)."""
        unknown = sorted(set(self.options) - allowed - set(SECRET_FILES))
        if unknown:
            raise ConfigError(
                f"{self.display}: unknown option(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(allowed))})")


def _show_host(host: str, port: int | None) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port is None else f"{h}:{port}"


def _split_host(item: str, shown: str) -> tuple[str, int | None]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ConfigError(f"store URL {shown!r}: bad host {item!r}")
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigError(f"store URL {shown!r}: empty host")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"store URL {shown!r}: bad port {port_text!r}")
    return host, int(port_text)


def parse(url: str, env: Mapping[str, str] | None = None) -> StoreURL:
    """Parse ``SCHEME://...``; credentials from the URL, ``*_file`` options or the environment."""
    e = os.environ if env is None else env
    shown = scrub(url)
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ConfigError(f"store URL {shown!r}: expected SCHEME://...")
    head, _, query = rest.partition("?")
    query, _, _fragment = query.partition("#")
    userinfo, at, hostpart = head.rpartition("@")
    netloc, slash, path = hostpart.partition("/")
    user: str | None = None
    password: str | None = None
    if at:
        u, colon, p = userinfo.partition(":")
        user = unquote(u) or None
        password = unquote(p) if colon else None
    hosts = tuple(_split_host(h.strip(), shown) for h in netloc.split(",")) if netloc else ()
    options: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k in SECRET_OPTIONS:
            raise ConfigError(
                f"store URL {shown!r}: a secret in the query string ends up in logs; "
                f"use {k}_file=PATH or ${PASSWORD_ENV if k == 'password' else k.upper()}")
        options[k] = v
    if "user" in options:
        user = options.pop("user") or None
    if password is not None and "password_file" in options:
        raise ConfigError(f"store URL {shown!r}: two passwords (user:password@ and "
                          f"password_file=)")
    secrets: dict[str, str] = {}
    for opt, (name, var) in SECRET_FILES.items():
        path_ = options.get(opt)
        if path_ is not None:
            secrets[name] = read_secret(path_, name.replace("_", " "))
        elif var and e.get(var):
            secrets[name] = e[var]
    if password is None:
        password = secrets.pop("password", None)
    else:
        secrets.pop("password", None)  # user:password@ wins over the environment
    return StoreURL(scheme.lower(), hosts, "/" + unquote(path) if slash else "", options,
                    user, password, secrets)
