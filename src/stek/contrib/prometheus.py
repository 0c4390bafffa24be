"""Prometheus metrics for a server process's stek installation (prometheus-client).

One process::

    handle = stek.install(ctx, store)
    stek.contrib.prometheus.register(handle)          # prometheus_client.REGISTRY
    prometheus_client.start_http_server(9100, "127.0.0.1")

Pre-fork servers (gunicorn, uvicorn, hypercorn workers): each worker has its
own installation and counters, so the metrics must be summed across workers.
prometheus-client's multiprocess mode does that from files in
``$PROMETHEUS_MULTIPROC_DIR``: :func:`track` copies the worker's counters
there (every ``interval`` seconds, and at each scrape served by
:func:`wsgi_app`), and :func:`wsgi_app` / :func:`asgi_app` serve the sum.
Custom collectors are not summed in multiprocess mode, hence the copy.

Names (the counters are those of :class:`stek.Counters`, whatever fields it
has: a field ``f`` that is not listed becomes ``stek_tickets_f_total``):

======================================  ==========================================
``issued``                              ``stek_tickets_issued_total``
``resumed``                             ``stek_tickets_resumed_total``
``renewed``                             ``stek_tickets_renewed_total``
``rejected_<reason>``                   ``stek_tickets_rejected_total{reason="<reason>"}``
``errors``                              ``stek_ticket_callback_errors_total``
a mapping field ``f`` (key name -> n)   ``stek_tickets_f_total{key_name="<hex>"}``
ring generation                         ``stek_server_ring_generation``
keys revoked, still remembered          ``stek_server_revoked_keys``
seconds since the last store read       ``stek_server_snapshot_age_seconds``
last store read succeeded (1/0)         ``stek_server_store_ok``
======================================  ==========================================

Key names are public (they travel in clear in every ticket); no key bytes
are ever exported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..installation import Installation

__all__ = ["StekCollector", "asgi_app", "metric_for", "register", "track", "wsgi_app"]

_NAMED = {
    "issued": "stek_tickets_issued",
    "resumed": "stek_tickets_resumed",
    "renewed": "stek_tickets_renewed",
    "errors": "stek_ticket_callback_errors",
}
_REJECTED = "stek_tickets_rejected"

_HELP = {
    "stek_tickets_issued": "Tickets sealed under the active key.",
    "stek_tickets_resumed": "Sessions resumed from a ticket.",
    "stek_tickets_renewed": "Resumptions answered with a new ticket.",
    "stek_ticket_callback_errors": "Failures inside the ticket callback.",
    _REJECTED: "Tickets refused (full handshake instead), by reason.",
}


def metric_for(field: str) -> tuple[str, dict[str, str]]:
    """The metric name (without ``_total``) and fixed labels for a counter field."""
    if field in _NAMED:
        return _NAMED[field], {}
    if field.startswith("rejected_"):
        return _REJECTED, {"reason": field[len("rejected_"):]}
    return f"stek_tickets_{field}", {}


def _samples(counters: Any) -> Iterator[tuple[str, dict[str, str], float]]:
    """(metric, labels, value) for every field of a Counters dataclass."""
    for f in dataclasses.fields(counters):
        value = getattr(counters, f.name)
        name, labels = metric_for(f.name)
        if isinstance(value, Mapping):
            for key, n in value.items():
                label = key.hex() if isinstance(key, (bytes, bytearray)) else str(key)
                yield name, {**labels, "key_name": label}, float(n)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, labels, float(value)


def _health(handle: Installation, now: float) -> dict[str, float]:
    out = {"stek_server_ring_generation": float(handle.ring.generation),
           # As stek status counts them: an entry whose key would have expired
           # is forgotten at the ring's next change (Keyring.without).
           "stek_server_revoked_keys": float(sum(1 for _, t in handle.ring.revoked if t > now))}
    last = getattr(handle, "last_refresh", None)
    if last is not None:
        out["stek_server_snapshot_age_seconds"] = max(0.0, now - float(last))
    ok = getattr(handle, "store_ok", None)
    if ok is not None:
        out["stek_server_store_ok"] = float(bool(ok))
    return out


_GAUGE_HELP = {
    "stek_server_ring_generation": "Generation of the ring the callback answers from.",
    "stek_server_snapshot_age_seconds": "Seconds since the store was last read successfully.",
    "stek_server_store_ok": "1 if the last store read succeeded, else 0.",
    "stek_server_revoked_keys": "Keys the ring in service says were revoked ('stek revoke'), "
                                "until each would have expired.",
}


class StekCollector(Collector):
    """Reads one installation at each scrape (one process)."""

    def __init__(self, handle: Installation, clock: Callable[[], float] = time.time) -> None:
        self.handle = handle
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        families: dict[str, CounterMetricFamily] = {}
        for name, labels, value in _samples(self.handle.counters):
            fam = families.get(name)
            if fam is None:
                fam = families[name] = CounterMetricFamily(
                    name, _HELP.get(name, f"stek ticket callback: {name}."),
                    labels=sorted(labels))
            fam.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()
        for name, value in _health(self.handle, self._clock()).items():
            yield GaugeMetricFamily(name, _GAUGE_HELP[name], value=value)


def register(handle: Installation, registry: CollectorRegistry = REGISTRY) -> StekCollector:
    """Expose ``handle``'s counters, ring generation and store health in ``registry``.

    One installation per registry (the names are fixed); returns the collector,
    which ``registry.unregister()`` removes.
    """
    collector = StekCollector(handle)
    registry.register(collector)
    return collector


# -- several worker processes: prometheus-client's multiprocess mode -------------------

#: Across live workers: the oldest ring served, the stalest snapshot, any store down.
_GAUGE_MODES = {
    "stek_server_ring_generation": "livemin",
    "stek_server_snapshot_age_seconds": "livemax",
    "stek_server_store_ok": "livemin",
    # A worker that has not yet seen a revocation shows fewer.
    "stek_server_revoked_keys": "livemin",
}


class _Mirror:
    """Copies this process's counters into prometheus_client metrics (which, in
    multiprocess mode, live in this worker's files) by adding what changed."""

    def __init__(self, source: Callable[[], Installation | None]) -> None:
        self.source = source
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._handle: Installation | None = None
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._registry = CollectorRegistry(auto_describe=False)  # never scraped itself

    def _counter(self, name: str, labels: Iterable[str]) -> Counter:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = Counter(
                name, _HELP.get(name, f"stek ticket callback: {name}."),
                labelnames=sorted(labels), registry=self._registry)
        return c

    def sync(self) -> None:
        handle = self.source()
        if handle is None:
            return
        with self.lock:
            if handle is not self._handle:  # a new installation counts from zero
                self._handle, self._last = handle, {}
            for name, labels, value in _samples(handle.counters):
                key = (name, tuple(sorted(labels.items())))
                delta = value - self._last.get(key, 0.0)
                self._last[key] = value
                # Made even at zero: in multiprocess mode a counter shows only once
                # its child exists, and one process's sample reads as 0, not absent.
                c = self._counter(name, labels)
                child = c.labels(**labels) if labels else c
                if delta > 0:
                    child.inc(delta)
            for name, value in _health(handle, time.time()).items():
                g = self._gauges.get(name)
                if g is None:
                    g = self._gauges[name] = Gauge(
                        name, _GAUGE_HELP[name], registry=self._registry,
                        multiprocess_mode=_GAUGE_MODES[name])  # type: ignore[arg-type]
                g.set(value)


_MIRROR: _Mirror | None = None


def track(source: Installation | Callable[[], Installation | None], *,
          interval: float = 5.0) -> None:
    """In a worker process: keep copying its installation's counters to the
    multiprocess files every ``interval`` seconds (a daemon thread).

    ``source`` is the installation or a function returning it (None until it
    exists), such as ``stek.contrib.gunicorn.installation``.  Call it once in
    each worker, after the fork (gunicorn's ``post_worker_init``).
    """
    global _MIRROR
    if isinstance(source, Installation):
        handle = source
        mirror = _Mirror(lambda: handle)
    else:
        mirror = _Mirror(source)
    _MIRROR = mirror

    def loop() -> None:
        while _MIRROR is mirror and mirror.pid == os.getpid():
            with contextlib.suppress(Exception):  # metrics must never hurt the server
                mirror.sync()
            time.sleep(interval)

    threading.Thread(target=loop, name="stek-metrics", daemon=True).start()


def _exposition() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    mirror = _MIRROR
    if mirror is not None and mirror.pid == os.getpid():
        mirror.sync()  # this worker's latest, the others' as of their last sync
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A WSGI app serving every worker's metrics, summed (route ``/metrics`` to it)."""
    body, ctype = _exposition()
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any],
                   send: Callable[..., Any]) -> None:
    """The ASGI twin of :func:`wsgi_app` (uvicorn, hypercorn)."""
    body, ctype = _exposition()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", ctype.encode()),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
