"""The mirror's part of the agent's /metrics (Prometheus collector).

Apart from :mod:`stek.mirror` so that only the agent imports prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .mirror import Mirror


class MirrorCollector(Collector):
    """The mirror's part of the agent's /metrics."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    def collect(self) -> Iterator[Metric]:
        m = self.mirror
        labels = [str(m.path)]
        ok = GaugeMetricFamily("stek_mirror_last_write_success_timestamp_seconds",
                               "Last time the mirror file was written or found current.",
                               labels=["path"])
        if m.last_ok is not None:
            ok.add_metric(labels, m.last_ok)
        yield ok
        gen = GaugeMetricFamily("stek_mirror_generation",
                                "Generation of the ring the mirror file holds.", labels=["path"])
        if m.generation is not None:
            gen.add_metric(labels, m.generation)
        yield gen
        for name, doc, value in (
            ("stek_mirror_writes", "Passes that changed the mirror file.", m.writes),
            ("stek_mirror_write_failures", "Failed writes of the mirror file.", m.failures),
        ):
            c = CounterMetricFamily(name, doc, labels=["path"])
            c.add_metric(labels, value)
            yield c
