"""The agent's ``/metrics`` (a Prometheus collector drawn from its state at
scrape time) and ``/healthz``, served by a bounded HTTP server (see
:mod:`stek.agent`)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .. import _httpd
from .._storeprobe import StoreProbe
from ..errors import ConfigError
from ..schedule import State, next_change, state_of
from ..stores import KeyStore
from .loop import Agent, next_boundary

log = logging.getLogger("stek.agent")

#: Default address of /metrics and /healthz: loopback only (``stek agent --metrics-addr``).
DEFAULT_METRICS_ADDR = "127.0.0.1:9477"


class AgentCollector(Collector):
    """Metrics drawn from the agent's state at scrape time (no stale label sets).

    With a ``probe`` (the metrics server's), the store's servers are shown as
    it last found them; without one, they are probed at collection time.
    """

    def __init__(self, agent: Agent, probe: StoreProbe | None = None) -> None:
        self.agent = agent
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        now = a.clock()
        ring = a.ring
        yield _counter("stek_rotations", "Passes that changed the ring.", a.rotations)
        yield _counter("stek_store_failures", "Passes that could not read or write the store.",
                       a.store_failures)
        yield from _store_health(a.store, self.probe)
        yield _counter("stek_store_rollbacks_refused",
                       "Store values refused for carrying an older generation than one seen.",
                       getattr(a.store, "rollbacks_refused", 0))
        yield _counter("stek_store_reseeds",
                       "Times the agent wrote its last ring back to a store found empty or "
                       "rolled back.", getattr(a.store, "reseeds", 0))
        yield _counter("stek_keys_revoked", "Keys seen revoked ('stek revoke') since start.",
                       a.revocations)
        yield _gauge("stek_agent_last_pass_timestamp_seconds",
                     "When the last successful pass ran.", a.last_pass_ok)
        if ring is not None:
            yield _gauge("stek_ring_generation", "Generation of the ring last read.",
                         ring.generation)
            yield _gauge("stek_next_rotation_timestamp_seconds",
                         "When the agent will next add or drop keys (Unix time).",
                         next_change(ring.keys, ring.policy, int(now)))
            yield _gauge("stek_next_key_change_timestamp_seconds",
                         "When a key next activates, retires or expires (Unix time).",
                         next_boundary(ring, now))
            yield _gauge("stek_publish_ahead_seconds", "The ring's publish_ahead.",
                         ring.policy.publish_ahead)
            counts = GaugeMetricFamily("stek_keys", "Keys in the ring by state.",
                                       labels=["state"])
            ages = GaugeMetricFamily(
                "stek_key_age_seconds",
                "Seconds since each key activated (negative while pending).",
                labels=["name", "state"])
            by_state = dict.fromkeys(State, 0)
            for k in ring.keys:
                st = state_of(k, now)
                by_state[st] += 1
                ages.add_metric([k.name.hex(), st.value], now - k.activates_at)
            for st, n in by_state.items():
                counts.add_metric([st.value], n)
            yield counts
            yield ages
            enc = ring.encrypting_key(now)
            if enc is not None:
                yield _gauge("stek_active_key_age_seconds",
                             "Seconds since the encrypting key activated.",
                             now - enc.activates_at)
        labels = ["target", "format"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "export_ok": GaugeMetricFamily(
                "stek_target_last_export_success_timestamp_seconds",
                "Last time the target's files were written or found current.", labels=labels),
            "export_fail": CounterMetricFamily(
                "stek_target_export_failures", "Failed exports.", labels=labels),
            "changes": CounterMetricFamily(
                "stek_target_changes", "Exports that changed the target's files.",
                labels=labels),
            "apply_ok": GaugeMetricFamily(
                "stek_target_last_reload_success_timestamp_seconds",
                "Last successful reload command (or HAProxy runtime API update).",
                labels=labels),
            "apply_fail": CounterMetricFamily(
                "stek_target_reload_failures",
                "Failed reload commands (or HAProxy runtime API updates).", labels=labels),
            "applies": CounterMetricFamily(
                "stek_target_reloads", "Successful reloads (or runtime API updates).",
                labels=labels),
            "owed": GaugeMetricFamily(
                "stek_target_reload_pending",
                "1 while a change waits for a successful reload.", labels=labels),
        }
        for t in a.targets:
            lv = [t.name, t.spec.format]
            if t.last_export_ok is not None:
                families["export_ok"].add_metric(lv, t.last_export_ok)
            families["export_fail"].add_metric(lv, t.export_failures)
            families["changes"].add_metric(lv, t.changes)
            if t.last_apply_ok is not None:
                families["apply_ok"].add_metric(lv, t.last_apply_ok)
            families["apply_fail"].add_metric(lv, t.apply_failures)
            families["applies"].add_metric(lv, t.applies)
            families["owed"].add_metric(lv, 1 if t.apply_owed else 0)
        yield from families.values()


def _store_health(store: KeyStore, probe: StoreProbe | None) -> Iterator[Metric]:
    """stek_store_endpoint_up: each store server as stek sees it (see stek._storeprobe)."""
    if probe is None:
        probe = StoreProbe(store)
        probe.probe()
    yield _gauge("stek_store_last_probe_timestamp_seconds",
                 "When the store's servers were last probed.", probe.at)
    g = GaugeMetricFamily("stek_store_endpoint_up",
                          "1 if the store server answers; role, TLS and user as labels.",
                          labels=["endpoint", "role", "tls", "user"])
    h = probe.last
    if h is None:
        return
    for e in h.endpoints:
        g.add_metric([e.address, e.role, "1" if h.tls else "0", h.user or ""],
                     1.0 if e.reachable else 0.0)
    yield g


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Limits of the /metrics server (see :mod:`stek._httpd`).
METRICS_MAX_CONNECTIONS = _httpd.MAX_CONNECTIONS
METRICS_TIMEOUT = _httpd.TIMEOUT


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` for one agent.

    Bounded (:class:`stek._httpd.BoundedHTTPServer`): one loop thread and a
    few answering threads whatever the number of clients, at most
    ``max_connections`` open (a new one closes the oldest), ``timeout``
    seconds to send a request.  The store's servers are probed by a thread
    of their own (:class:`stek._storeprobe.StoreProbe`), never while a
    request waits.  A non-loopback ``host`` is refused unless ``public``:
    the page names keys and targets.
    """

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 0, *,
                 public: bool = False, max_connections: int = METRICS_MAX_CONNECTIONS,
                 timeout: float = METRICS_TIMEOUT) -> None:
        check_metrics_host(host, public)
        self.agent = agent
        #: The store is probed in the background: a hung store never holds a request.
        self.probe = StoreProbe(agent.store)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AgentCollector(agent, self.probe))
        try:
            self.httpd = _httpd.BoundedHTTPServer(self.app, host, port,
                                                  max_connections=max_connections,
                                                  timeout=timeout)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: "
                              f"{exc.strerror or exc}") from exc
        self.host = host
        self.port = int(self.httpd.address[1])

    def app(self, path: str) -> _httpd.Response:
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        if path == "/healthz":
            problems = self.agent.health()
            text = "ok\n" if not problems else "".join(f"{p}\n" for p in problems)
            text += "".join(f"{n}\n" for n in self.agent.notes())
            return (200 if not problems else 503), text.encode(), "text/plain; charset=utf-8"
        return 404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8"

    def start(self) -> MetricsServer:
        self.probe.start()
        self.httpd.start()
        log.info("serving /metrics and /healthz on http://%s:%d (at most %d connections, "
                 "%gs per request)", self.host, self.port, self.httpd.max_connections,
                 self.httpd.timeout)
        return self

    def close(self) -> None:
        self.probe.close()
        self.httpd.close()


def check_metrics_host(host: str, public: bool) -> None:
    """Refuse a non-loopback address unless the caller said so (``public``; the
    CLI's ``--metrics-public``)."""
    if not public and not is_loopback(host):
        raise ConfigError(f"metrics on {host}: not a loopback address; /metrics and /healthz "
                          f"name keys and targets: serving them there takes public=True "
                          f"(--metrics-public)")
