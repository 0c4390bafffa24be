"""``stek agent``: rotate, export to servers, reload them, serve /metrics.

The options are read here (:func:`parse_export`, :func:`parse_metrics_addr`),
and their mistakes said in their own terms; :mod:`stek.agent` does the work.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import click

from ..agent import (
    DEFAULT_METRICS_ADDR,
    MAX_SLEEP,
    METRICS_MAX_CONNECTIONS,
    METRICS_TIMEOUT,
    RELOAD_TIMEOUT,
    Agent,
    MetricsServer,
    TargetSpec,
    build_targets,
    check_metrics_host,
    is_loopback,
    reload_environment,
)
from ..errors import ConfigError, StekError
from ..export import FORMATS
from ..mirror import DEFAULT_URL as DEFAULT_MIRROR
from ..mirror import MirrorCollector, open_mirror, refuse_rotation
from ..scope import check_scope
from ..stores import default_url
from ._common import DURATION, open_cli_store, sealing_options, setup_logging, store_option

log = logging.getLogger("stek.agent")

_META_TARGETS = "stek.agent.targets"
_TARGET_OPTS = ("--export", "--reload", "--haproxy-socket", "--scope")


def parse_export(text: str, reloads: Sequence[str] = (), haproxy_sockets: Sequence[str] = (),
                 scope: str | None = None) -> TargetSpec:
    """``--export FORMAT:PATH`` with the ``--reload``, ``--haproxy-socket`` and
    ``--scope`` that follow it -> a TargetSpec; ConfigError naming the options."""
    fmt, sep, path = text.partition(":")
    if not sep or not path:
        raise ConfigError(f"--export {text!r}: use FORMAT:PATH, FORMAT one of "
                          f"{', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise ConfigError(f"--export {text!r}: unknown format {fmt!r} (use one of "
                          f"{', '.join(FORMATS)})")
    if haproxy_sockets and fmt != "haproxy":
        raise ConfigError(f"--haproxy-socket follows --export {text!r}: it only applies to "
                          f"an haproxy export")
    if haproxy_sockets and reloads:
        raise ConfigError(f"--export {text!r}: give either --reload or --haproxy-socket "
                          f"(the runtime API needs no reload)")
    if any(not r.strip() for r in reloads):
        raise ConfigError(f"--export {text!r}: empty --reload command")
    if len(set(reloads)) != len(reloads):
        raise ConfigError(f"--export {text!r}: the same --reload twice")
    sockets = tuple(Path(h).expanduser().absolute() for h in haproxy_sockets)
    if len(set(sockets)) != len(sockets):
        raise ConfigError(f"--export {text!r}: the same --haproxy-socket twice")
    try:
        check_scope(scope)
    except ConfigError as exc:
        raise ConfigError(f"--export {text!r} --scope {scope!r}: {exc}") from None
    return TargetSpec(fmt, Path(path).expanduser().absolute(), tuple(reloads), sockets, scope)


def parse_metrics_addr(text: str, public: bool = False) -> tuple[str, int]:
    """``--metrics-addr HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); a
    non-loopback host is refused unless ``public`` (``--metrics-public``), as
    :class:`~stek.agent.MetricsServer` would, but before anything binds."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--metrics-addr {text!r}: use HOST:PORT, for example "
                          f"{DEFAULT_METRICS_ADDR}")
    host = host.strip("[]")
    if int(port) > 65535:
        raise ConfigError(f"--metrics-addr {text!r}: port out of range")
    try:
        check_metrics_host(host, public)
    except ConfigError:
        raise ConfigError(f"--metrics-addr {host}: not a loopback address; /metrics and "
                          f"/healthz name keys and targets: add --metrics-public to serve "
                          f"them there") from None
    return host, int(port)


def _ordered_targets(args: list[str]) -> list[TargetSpec]:
    """Give each --scope, --reload and --haproxy-socket to the --export before it.

    click keeps each repeated option's values apart, losing how they were
    interleaved; that order is what says which reload belongs to which export.
    An export takes one --scope and any number of --reload (or of
    --haproxy-socket): one per server instance reading its files.
    """
    groups: list[tuple[str, dict[str, list[str]]]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in _TARGET_OPTS:
            if not eq:
                if i + 1 >= len(args):
                    break  # click reports the missing value
                value = args[i + 1]
                i += 1
            if name == "--export":
                groups.append((value, {}))
            elif not groups:
                raise click.UsageError(f"{name} must follow the --export it applies to")
            else:
                export, opts = groups[-1]
                if name == "--scope" and opts.get("scope"):
                    raise click.UsageError(f"--export {export} has two --scope")
                opts.setdefault(name[2:], []).append(value)
        i += 1
    try:
        specs = [parse_export(export, opts.get("reload", ()), opts.get("haproxy-socket", ()),
                              next(iter(opts.get("scope", ())), None))
                 for export, opts in groups]
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    paths = [s.path for s in specs]
    for path in paths:
        if paths.count(path) > 1:  # stek.agent.build_targets refuses it too
            raise click.UsageError(f"two --export targets write {path}")
    return specs


class _AgentCommand(click.Command):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_META_TARGETS] = _ordered_targets(list(args))
        return super().parse_args(ctx, args)


@click.command(cls=_AgentCommand)
@store_option
@click.option("--export", "exports", metavar="FORMAT:PATH", multiple=True,
              help="Keep PATH current in FORMAT (nginx:DIR, haproxy:FILE, apache:FILE, "
                   "envoy:DIR, openssl:FILE).  Repeatable.")
@click.option("--scope", "scopes", metavar="NAME", multiple=True,
              help="After an --export: export this key scope's keys (derived from the "
                   "ring's, see docs/trust.md) instead of the ring's own.  One per --export.")
@click.option("--reload", "reloads", metavar="CMD", multiple=True,
              help="Shell command run (by /bin/sh -c) once after each change of the "
                   "--export it follows, e.g. 'nginx -s reload'.  Repeat it for each server "
                   "instance reading that export.  A failure is retried with backoff and "
                   "reported until it succeeds.")
@click.option("--haproxy-socket", "sockets", metavar="PATH", multiple=True,
              help="After an --export haproxy:FILE: push new keys into the running HAProxy "
                   "through this runtime API socket (set ssl tls-key), no reload.  Repeat "
                   "it for each HAProxy reading that file.")
@click.option("--metrics-addr", default=DEFAULT_METRICS_ADDR, show_default=True,
              metavar="HOST:PORT",
              help=f"Serve /metrics and /healthz here, from one thread: at most "
                   f"{METRICS_MAX_CONNECTIONS} connections (a new one closes the oldest), "
                   f"{METRICS_TIMEOUT:g}s to send a request.  Loopback only, unless "
                   f"--metrics-public.")
@click.option("--metrics-public", is_flag=True,
              help="Allow a non-loopback --metrics-addr: whoever reaches it sees key names "
                   "and target health.")
@click.option("--no-metrics", is_flag=True, help="Do not serve /metrics and /healthz.")
@click.option("--interval", type=DURATION, default=f"{int(MAX_SLEEP)}s", show_default=True,
              help="Longest sleep between passes: how soon a key added by another host is "
                   "exported here.  Keep it under the ring's publish_ahead.")
@click.option("--reload-timeout", type=DURATION, default=f"{int(RELOAD_TIMEOUT)}s",
              show_default=True,
              help="Kill a reload command running longer than this: its whole process "
                   "group, as when the agent stops.")
@click.option("--mirror", "mirror_url", metavar="file:PATH", is_flag=False,
              flag_value=DEFAULT_MIRROR, default=None,
              help=f"Keep the ring, opened, in this local file for this host's workers "
                   f"(STEK_STORE=file:PATH: no KEK, no store credentials) [bare --mirror: "
                   f"{DEFAULT_MIRROR}].  See docs/fleet.md.")
@click.option("--mirror-group", metavar="NAME", default=None,
              help="Make the --mirror file readable by this group (mode 0640).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def agent(store_url: str | None, exports: tuple[str, ...], scopes: tuple[str, ...],
          reloads: tuple[str, ...], sockets: tuple[str, ...], metrics_addr: str,
          metrics_public: bool, no_metrics: bool, interval: int, reload_timeout: int,
          mirror_url: str | None, mirror_group: str | None, verbose: int) -> None:
    """Run the rotation daemon in the foreground.

    Creates the ring with the default policy if the store is empty, rotates
    it on schedule, logs every change (never key bytes), retries with backoff
    while the store is unreachable, and stops cleanly on SIGTERM or SIGINT.

    \b
    With targets, it also keeps servers on the ring's keys:
      stek agent --export nginx:/run/stek/nginx --reload 'nginx -s reload' \\
                 --export haproxy:/run/stek/haproxy.keys \\
                 --haproxy-socket /run/haproxy/a.sock --haproxy-socket /run/haproxy/b.sock

    Options after an --export apply to it: --scope NAME (its servers get
    that scope's keys), and one --reload (or --haproxy-socket) per server
    instance reading it.

    publish_ahead (see 'stek init') must exceed the time the slowest target
    takes to pick a new key up: the agent warns when --interval, the reload
    retry or the reload itself breaks that rule.  See docs/exporters.md.

    Reload commands run without the agent's secrets in their environment
    (STEK_KEK, STEK_KEK_FILE, and any variable holding the store's password
    or the KEK, whatever its name).  A metrics port held by another program
    is an error (exit 1): give another --metrics-addr, or --no-metrics.
    """
    ctx = click.get_current_context()
    specs: list[TargetSpec] = ctx.meta.get(_META_TARGETS, [])
    if len(specs) != len(exports):  # defensive: the ordered scan must agree with click
        raise click.UsageError("could not pair --scope/--reload/--haproxy-socket with "
                               "--export")
    addr = None if no_metrics else parse_metrics_addr(metrics_addr, metrics_public)
    if mirror_group is not None and mirror_url is None:
        raise click.UsageError("--mirror-group needs --mirror")
    setup_logging(verbose)
    url = default_url() if store_url is None else store_url
    kek_file = sealing_options().get("kek_file")
    env = reload_environment(os.environ, [url], kek_files=[str(kek_file)] if kek_file else [])
    targets = build_targets(specs, reload_timeout=float(reload_timeout), env=env)
    store = open_cli_store(url)
    refuse_rotation(store)  # a mirror is kept by the agent that mirrors into it
    mirror = open_mirror(mirror_url, mirror_group, store) if mirror_url else None
    a = Agent(store, targets=targets, interval=float(interval))
    server = _metrics(a, addr, metrics_public)
    if mirror is not None:
        mirror.attach(a)
        if server is not None:
            server.registry.register(MirrorCollector(mirror))
    if not targets:
        _next_steps(store.url, mirror_url)
    a.install_signal_handlers()
    try:
        a.run()
    finally:
        if server is not None:
            server.close()


def _next_steps(url: str, mirror_url: str | None) -> None:
    """The first screen of an agent with no --export: what to do with the ring."""
    served = mirror_url or url
    log.info("next: point servers at %s: STEK_STORE=%s, then stek.install(ctx) in Python "
             "servers (README.md, docs/integrations.md)", served, served)
    log.info("next: keep nginx, HAProxy or Apache current: --export FORMAT:PATH --reload CMD "
             "(docs/exporters.md); as a service: deploy/systemd/stek-agent.service "
             "(docs/deploy.md)")


def _metrics(a: Agent, addr: tuple[str, int] | None, public: bool) -> MetricsServer | None:
    if addr is None:
        return None
    host, port = addr
    if public and not is_loopback(host):
        log.warning("serving /metrics on %s:%d (--metrics-public): anyone who can reach it "
                    "sees key names and target health", host, port)
    try:
        return MetricsServer(a, host, port, public=public).start()
    except ConfigError as exc:
        # Even the default port: whoever holds it would answer /healthz for this
        # agent (a monitor would see 200 from a squatter), so refuse to run.
        raise StekError(f"{exc} (give another --metrics-addr, or --no-metrics)") \
            from exc.__cause__


def register(group: click.Group) -> None:
    group.add_command(agent)

