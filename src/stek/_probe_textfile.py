"""``stek probe --textfile``: the report in Prometheus text format."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ._probe_client import ProbeError
from ._probe_report import Report


def write_textfile(path: str, report: Report | None) -> None:
    """The report in Prometheus text format, for node_exporter's textfile collector
    (``report`` None: the probe failed, ``stek_probe_success 0``).

    prometheus_client.write_to_textfile writes a temporary file beside ``path``
    and renames it over ``path``, so the collector never reads half a file.
    """
    from prometheus_client import CollectorRegistry, write_to_textfile
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _Probe(Collector):
        def collect(self) -> Iterable[GaugeMetricFamily]:
            ok = GaugeMetricFamily("stek_probe_success",
                                   "1 if every endpoint of the last probe was measured.")
            ok.add_metric([], 0.0 if report is None or not all(
                report.up(t) for t in report.targets) else 1.0)
            yield ok
            stamp = GaugeMetricFamily("stek_probe_timestamp_seconds",
                                      "When the last probe ran.")
            stamp.add_metric([], report.now if report is not None else time.time())
            yield stamp
            if report is None:
                return
            yield _gauge("stek_probe_up", "1 if a TLS server answered on the endpoint under "
                         "every TLS version probed.", ["target"],
                         [([t], float(report.up(t))) for t in report.targets])
            yield _gauge("stek_probe_all_resume", "1 if every ordered pair resumed.", [],
                         [([], float(report.all_resume))])
            labels = ["target", "tls"]
            eps = report.endpoints
            yield _gauge("stek_probe_tickets", "Tickets issued on a full handshake.", labels,
                         [([e.target, e.tls], float(e.tickets)) for e in eps])
            yield _gauge("stek_probe_ticket_lifetime_hint_seconds",
                         "The lifetime hint of the endpoint's ticket.", labels,
                         [([e.target, e.tls], float(e.lifetime_hint)) for e in eps
                          if e.lifetime_hint is not None])
            yield _gauge("stek_probe_self_resume", "1 if the endpoint resumed its own ticket.",
                         labels, [([e.target, e.tls], float(e.self_resume)) for e in eps
                                  if e.self_resume is not None])
            yield _gauge("stek_probe_key_info", "The key name the endpoint seals tickets "
                         "under (public: it travels in clear in every ticket).",
                         [*labels, "key_name", "key_state"],
                         [([e.target, e.tls, e.key_name, e.key_state or ""], 1.0)
                          for e in eps if e.key_name is not None])
            yield _gauge("stek_probe_resumed", "1 if a ticket from one endpoint resumed on "
                         "another.", ["from", "to", "tls"],
                         [([c.src, c.dst, c.tls], float(c.resumed)) for c in report.matrix])
            kinds: dict[str, int] = defaultdict(int)
            for d in report.diagnoses:
                kinds[d.kind] += 1
            yield _gauge("stek_probe_diagnoses", "Problems found, by kind.", ["kind"],
                         [([k], float(n)) for k, n in sorted(kinds.items())])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Probe())
    try:
        write_to_textfile(path, registry)
    except OSError as exc:
        raise ProbeError(f"cannot write --textfile {path}: {exc.strerror or exc}") from exc


def _gauge(name: str, doc: str, labels: list[str],
           samples: list[tuple[list[str], float]]) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    g = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        g.add_metric(values, value if math.isfinite(value) else math.nan)
    return g
