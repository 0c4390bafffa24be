"""One grammar for every store URL, and the one scrubbed form stek ever shows.

A URL is ``SCHEME://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...][/PATH][?OPTIONS]``
(``file:PATH`` and ``memory:`` aside).  Several hosts name several etcd
members or Redis Sentinels.  :func:`split` is the one place that finds the
credentials, for parsing, for :func:`scrub` and for the reload commands'
environment (stek._command): the userinfo is everything before the LAST
``@``, so a password may hold ``/``, ``?``, ``#``, ``:`` or ``@`` unencoded
(RFC 3986 section 3.2.1 wants them percent-encoded; people paste them as
they are).  An ``@`` after the hosts (in the path or an option) must be
written ``%40``.  Credentials never need to be on a command line:

* ``password_file=PATH`` (and ``sentinel_password_file=``, ``ssl_password_file=``)
  name a file holding the secret (trailing newline stripped);
* ``$STEK_STORE_PASSWORD`` (``$STEK_STORE_SENTINEL_PASSWORD``) are read when
  no file is named;
* ``user:password@`` still works for programs that build the URL in memory.

Secrets spelt in the query string (any option whose decoded, lower-cased name
looks secret: ``?Password=``, ``?pass%77ord=``, ``?auth_token=``...) are
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

#: What a secret option's name looks like, once percent-decoded and lower-cased:
#: ``Password``, ``PASSWD``, ``pass%77ord``, ``auth_token``, ``kek``...  Matched
#: loosely on purpose: a false positive costs a clear error, a miss a leak.
_SECRET_NAME = re.compile(r"pass|pwd|token|secret|auth|credential|kek|private")
#: Options that look secret by name but hold a path (shown, not refused).
_PATH_OPTIONS = frozenset({*SECRET_FILES, "kek_file"})


def is_secret_option(name: str) -> bool:
    """Whether query option ``name`` (as written) may hold a secret value."""
    n = unquote(name).strip().lower()
    return n in SECRET_OPTIONS or (n not in _PATH_OPTIONS and bool(_SECRET_NAME.search(n)))


def _scrub_query(query: str) -> str:
    """``query`` with the value of every secret-looking option replaced by ``***``."""
    out = []
    for item in query.split("&"):
        name, eq, _ = item.partition("=")
        name_only = unquote(name.replace("+", " "))
        out.append(f"{name}=***" if eq and is_secret_option(name_only) else item)
    return "&".join(out)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class Parts:
    """A URL cut at its delimiters, nothing decoded or checked (see :func:`split`)."""

    #: Everything up to the hosts: ``SCHEME:`` and the ``//`` if written.
    head: str
    scheme: str
    #: Everything before the last "@" (None: no "@"), as written.
    userinfo: str | None
    #: The host list: from the last "@" to the first "/", "?" or "#".
    hosts: str
    #: From that "/" on (with it; "" if none), up to "?" or "#".
    path: str
    #: After the "?" (None: no "?"), up to "#"; the fragment is dropped.
    query: str | None

    @property
    def user(self) -> str | None:
        return None if self.userinfo is None else self.userinfo.partition(":")[0]

    @property
    def password(self) -> str | None:
        """The password as written (percent-encoded or not); None if there is no ":"."""
        if self.userinfo is None:
            return None
        _, colon, password = self.userinfo.partition(":")
        return password if colon else None


def split(url: str) -> Parts:
    """Cut ``url`` into its parts; never raises.

    The only place that finds a store URL's credentials: the userinfo runs
    to the LAST "@", whatever "/", "?", "#" or ":" it holds, so no part of
    a password can be taken for a host, a path or an option.
    """
    m = _SCHEME.match(url)
    head = m.group() if m else ""
    rest = url[len(head):]
    if rest.startswith("//"):
        head, rest = head + "//", rest[2:]
    userinfo, at, rest = rest.rpartition("@")
    rest = rest.partition("#")[0]
    rest, q, query = rest.partition("?")
    hosts, slash, path = rest.partition("/")
    return Parts(head, head.partition(":")[0], userinfo if at else None, hosts,
                 slash + path, query if q else None)


def scrub(text: str) -> str:
    """``text`` (a URL, parsed or not) with every password and secret option removed."""
    p = split(text)
    user = f"{p.user}@" if p.user else ""
    query = "" if p.query is None else "?" + _scrub_query(p.query)
    return f"{p.head}{user}{p.hosts}{p.path}{query}"


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
        return self._shown(self.options)

    def _shown(self, options: Mapping[str, str]) -> str:
        hosts = ",".join(_show_host(h, p) for h, p in self.hosts)
        user = f"{quote(self.user, safe='')}@" if self.user else ""
        query = f"?{urlencode(sorted(options.items()), safe='/:')}" if options else ""
        return f"{self.scheme}://{user}{hosts}{quote(self.path, safe='/')}{query}"

    def take(self, allowed: set[str]) -> None:
        """Refuse options this store does not know (a typo must not be silently dropped).

        Unknown options are named without their values: a mistyped option
        name may well be a secret's.
        """
        known = allowed | set(SECRET_FILES)
        unknown = sorted(set(self.options) - known)
        if unknown:
            shown = self._shown({k: v for k, v in self.options.items() if k in known})
            raise ConfigError(
                f"{shown}: unknown option(s) {', '.join(quote(k) for k in unknown)} "
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
    p = split(url)
    if not p.head.endswith("://") or not p.scheme:
        raise ConfigError(f"store URL {shown!r}: expected SCHEME://...")
    scheme, netloc, query = p.scheme, p.hosts, p.query or ""
    user = unquote(p.user or "") or None
    password = None if p.password is None else unquote(p.password)
    hosts = tuple(_split_host(h.strip(), shown) for h in netloc.split(",")) if netloc else ()
    options: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if is_secret_option(k):
            raise ConfigError(
                f"store URL {shown!r}: a secret in the query string ({k}=) ends up in logs; "
                f"use password_file=PATH (or ssl_password_file=, sentinel_password_file=) "
                f"or ${PASSWORD_ENV}")
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
    return StoreURL(scheme.lower(), hosts, unquote(p.path), options, user, password, secrets)
