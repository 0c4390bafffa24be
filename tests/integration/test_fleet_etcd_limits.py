"""etcd limits stek relies on: the watch line cap, and auth tokens that expire.

The line cap is fed by a fake etcd gateway on 127.0.0.1 (a real etcd never
sends a 4 MiB line); token expiry runs against a real etcd started with a
1 s ``--auth-token-ttl``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from etcd3gw import exceptions as etcd_exc

from helpers.fleet_scenarios import shared
from helpers.pki import make_pki
from helpers.store_servers import EtcdCluster
from helpers.waiting import wait_until
from stek import Policy, init_ring, rotate
from stek.stores.etcd import MAX_WATCH_LINE, EtcdStore

pytestmark = pytest.mark.usefixtures("no_kek_env")

#: What the fake gateway sends at most per watch: far past the cap, so that a
#: reader without one would hold it all.
FLOOD = 16 * MAX_WATCH_LINE


@dataclass
class Gateway:
    """A fake etcd JSON gateway: ``/version``, and a watch that streams what the test asks.

    ``flood``: bytes without a newline, up to FLOOD; otherwise a watch
    created, one event 0.2 s later, then an idle stream held open.
    """

    chunked: bool
    flood: bool = True
    sent: list[int] = field(default_factory=list)  # bytes sent on each watch connection
    done: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"etcd://127.0.0.1:{self.server.server_address[1]}/flood"


def _handler(gw: Gateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if gw.chunked else "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps({"etcdserver": "3.4.23", "etcdcluster": "3.4.0"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def send(self, data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if gw.chunked else data)
            self.wfile.flush()
            gw.sent[-1] += len(data)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if gw.chunked:  # as etcd's gateway streams a watch (Go's net/http)
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            gw.sent.append(0)
            try:
                if gw.flood:
                    while gw.sent[-1] < FLOOD:
                        self.send(b"x" * 65536)
                else:
                    self.send(b'{"result":{"header":{},"created":true}}\n')
                    time.sleep(0.2)
                    self.send(b'{"result":{"header":{},"events":[{"kv":{}}]}}\n')
                    gw.done.wait(10)
            except OSError:  # the reader hung up: what the cap should make it do
                pass
            self.close_connection = True

    return Handler


def _serve(gw: Gateway) -> Iterator[Gateway]:
    gw.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(gw))
    gw.server.daemon_threads = True
    t = threading.Thread(target=gw.server.serve_forever, daemon=True)
    t.start()
    try:
        yield gw
    finally:
        gw.done.set()
        gw.server.shutdown()
        gw.server.server_close()


@pytest.fixture(params=["chunked", "until-close"])
def gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    yield from _serve(Gateway(chunked=request.param == "chunked"))


@pytest.fixture(params=["chunked", "until-close"])
def quiet_gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    yield from _serve(Gateway(chunked=request.param == "chunked", flood=False))


class _Watch:
    """What EtcdStore._listen needs from a WatchThread, without the thread."""

    reconnects = 0

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.notified = 0

    def on_close(self, fn: Callable[[], None]) -> None:
        pass

    def ready(self) -> None:
        self.notified += 1

    def changed(self) -> None:
        self.notified += 1


def test_watch_line_without_newline_ends_the_stream_with_bounded_memory(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """A 64 MiB line is cut at 4 MiB: one clean error, a few MiB held, the stream dropped."""
    store = shared(gateway.url, insecure_plaintext=True)
    assert isinstance(store, EtcdStore)
    tracemalloc.start()
    try:
        with pytest.raises(etcd_exc.Etcd3Exception) as info:
            store._listen(_Watch())  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.detail_text == f"watch line longer than {MAX_WATCH_LINE} bytes"
    # The buffer, the copy that extends it and split()'s copy: about 3x the cap.
    assert peak < 4 * MAX_WATCH_LINE, f"peak {peak / 2**20:.1f} MiB"
    wait_until(lambda: gateway.sent and gateway.sent[-1] > 0, 5)
    # The reader stopped reading: the server could not send much past the cap.
    assert gateway.sent[0] < 4 * MAX_WATCH_LINE, gateway.sent
    # Through subscribe(): the watch thread logs one line naming the error, and reconnects.
    caplog.set_level(logging.WARNING, logger="stek")
    watch = store.subscribe(lambda: None)
    try:
        wait_until(lambda: len(gateway.sent) >= 3, 20, step=0.05)
    finally:
        watch.close()
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert lost == [f"watch on {store.url} lost (Etcd3Exception); reconnecting"]


def test_watch_event_arrives_while_the_stream_stays_open(quiet_gateway: Gateway) -> None:
    """Chunked or not, an event is seen when it arrives, not when the stream ends."""
    store = shared(quiet_gateway.url, insecure_plaintext=True)
    changes: list[float] = []
    watch = store.subscribe(lambda: changes.append(time.monotonic()))
    try:
        # ready() on "created", then the event: two notifications, the stream still open.
        wait_until(lambda: len(changes) >= 2, 5)
        assert not quiet_gateway.done.is_set()
    finally:
        watch.close()


# -- auth tokens that expire -------------------------------------------------------------


@pytest.fixture
def short_token_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    c = EtcdCluster(tmp_path / "etcd", make_pki(tmp_path / "pki"), n=1)
    # etcd 3.4 `etcd --help`: "--auth-token-ttl 300  Time (in seconds) of the
    # auth-token-ttl"; simple tokens are dropped once idle that long (whole
    # seconds: 1 is the shortest).
    c.members[0].extra = ["--auth-token-ttl", "1"]
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _wait_dropped(etcd: EtcdCluster, *tokens: str | None) -> None:
    """Until etcd has dropped every one of ``tokens``, idle past the TTL: its
    keeper sweeps them every second and logs each (etcd 3.4 auth/simple_token.go,
    "deleted a simple token", at info)."""
    assert None not in tokens

    def dropped() -> bool:
        lines = [x for x in etcd.members[0].log.read_text().splitlines()
                 if "deleted a simple token" in x]
        return all(any(f'"token":"{t}"' in x for x in lines) for t in tokens)

    wait_until(dropped, timeout=30, step=0.05)


@pytest.mark.servers
def test_reads_writes_and_watch_go_on_after_the_token_expires(
        short_token_etcd: EtcdCluster, kek_file: Path) -> None:
    step = 60
    base = 28_333_334 * step
    store = shared(short_token_etcd.url, kek_file)
    first = init_ring(store, Policy(rotate_every=step, accept_for=3600, publish_ahead=30),
                      now=base).ring
    reader = shared(short_token_etcd.server_url, kek_file)  # the read-only user
    assert isinstance(store, EtcdStore) and isinstance(reader, EtcdStore)
    reader.read()
    tokens = (store._m._token, reader._m._token)
    assert None not in tokens
    changes: list[float] = []
    watch = reader.subscribe(lambda: changes.append(time.time()))
    assert watch.connected.wait(10)
    try:
        for i in range(1, 3):
            _wait_dropped(short_token_etcd, store._m._token, reader._m._token)
            seen = len(changes)
            r = rotate(store, now=base + i * step)  # a write with a token etcd dropped
            assert r.added
            assert reader.read().generation == r.ring.generation
            # The watch opened before the token expired still reports the write.
            wait_until(lambda seen=seen: len(changes) > seen, 5)
        # Both clients really renewed: etcd answered "invalid auth token" and stek logged in again.
        assert store._m._token not in (None, tokens[0])
        assert reader._m._token not in (None, tokens[1])
        # A watch opened with an expired token renews it and reports the next write.
        _wait_dropped(short_token_etcd, reader._m._token)
        late: list[float] = []
        watch2 = reader.subscribe(lambda: late.append(time.time()))
        try:
            assert watch2.connected.wait(10)
            seen = len(late)
            rotate(store, now=base + 3 * step)
            wait_until(lambda: len(late) > seen, 5)
        finally:
            watch2.close()
        assert store.read().generation == first.generation + 3
    finally:
        watch.close()
