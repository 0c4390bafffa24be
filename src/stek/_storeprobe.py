"""The store's servers, probed in the background for ``/metrics``.

Probing a store (Redis ``ROLE`` and Sentinel ``PING``, etcd
``/v3/maintenance/status`` on each member) takes a round trip per server,
and a server that hangs (stopped, partitioned) holds the probe for the
client's timeouts: seconds.  Done at scrape time, that would hold the
scrape, and with it every request the metrics server had not answered yet,
``/healthz`` included, exactly while the store is in trouble.  So one
daemon thread probes every :data:`INTERVAL` seconds and ``/metrics`` shows
the last completed probe, with its time
(``stek_store_last_probe_timestamp_seconds``): a probe that hangs leaves the
previous answer, visibly aging.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .stores import KeyStore
from .stores.base import StoreHealth, health_of

log = logging.getLogger("stek.agent")

#: Seconds between the end of one probe and the start of the next.
INTERVAL = 5.0


class StoreProbe:
    """Probes ``store`` in a daemon thread; :attr:`last` is the latest completed answer."""

    def __init__(self, store: KeyStore, *, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.interval = interval
        self.clock = clock
        #: The last completed probe and when it completed (None before the first).
        self.last: StoreHealth | None = None
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stek-store-probe", daemon=True)

    def start(self) -> StoreProbe:
        self._thread.start()
        return self

    def probe(self) -> None:
        """One probe, now, in the calling thread."""
        try:
            health = health_of(self.store)
        except Exception:  # a probe must never end the thread
            log.debug("store health probe failed", exc_info=True)
            return
        self.last, self.at = health, self.clock()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe()
            self._stop.wait(self.interval)

    def close(self) -> None:
        """Stop probing.  A probe in flight ends on its own (the thread is a daemon):
        waiting for it would hold the caller for the store's timeouts."""
        self._stop.set()
