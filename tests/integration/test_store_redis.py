"""RedisStore against a real redis-server on 127.0.0.1 (started and killed by the tests)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.store_servers import RedisServer
from stek import ConfigError, StoreUnavailable, open_store
from stek._reactor import collection_paused
from stek.stores.base import health_of
from stek.stores.redis import RedisStore

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]


def test_url_password_never_shown(kek_file: Path) -> None:
    store = open_store("redis://stek:s3cr3tpw@127.0.0.1:1/0?prefix=p", kek_file=str(kek_file))
    assert isinstance(store, RedisStore)
    assert "s3cr3tpw" not in store.url and "s3cr3tpw" not in repr(store)
    assert store.url == "redis://stek@127.0.0.1:1/0?prefix=p"
    assert store.key == "p:keyring"
    with pytest.raises(StoreUnavailable) as info:
        store.read()  # nothing listens on port 1
    assert "s3cr3tpw" not in str(info.value)


def test_unknown_option_and_bad_url_are_config_errors(kek_file: Path) -> None:
    with pytest.raises(ConfigError, match="unknown store option"):
        open_store("redis://127.0.0.1:1/0", kek_file=str(kek_file), colour="blue")
    with pytest.raises(ConfigError):
        open_store("redis://127.0.0.1:1/0?prefix=", kek_file=str(kek_file))


def test_unreachable_server_fails_fast(kek_file: Path) -> None:
    """A refresher must never hang: a dead address answers within the short timeouts."""
    from helpers.ports import free_port

    store = open_store(f"redis://127.0.0.1:{free_port()}/0", kek_file=str(kek_file))
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.read()
    assert time.monotonic() - t < 3


def test_write_that_reaches_no_replica_does_not_count(redis_server: RedisServer,
                                                      kek_file: Path) -> None:
    """min_replicas=1 on a primary without replicas: WAIT answers 0, the write is refused."""
    from stek import Policy, init_ring

    store = open_store(redis_server.url + "&min_replicas=1&wait_timeout=200ms",
                       kek_file=str(kek_file))
    with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
        init_ring(store, Policy())
    # Without replicas connected, the default (auto) counts the primary's word.
    auto = open_store(redis_server.url, kek_file=str(kek_file))
    assert init_ring(auto, Policy(), force=True).ring.keys


class RedisReplica(RedisServer):
    """A redis-server replicating another one (``--replicaof``), on its own port and dir."""

    def __init__(self, workdir: Path, primary: RedisServer) -> None:
        super().__init__(workdir)
        self.primary = primary

    def _cmd(self) -> list[str]:
        return [*super()._cmd(), "--replicaof", "127.0.0.1", str(self.primary.port)]

    def pause(self) -> None:
        """SIGSTOP: still connected to its primary, it acknowledges nothing."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)


def wait_online(primary: RedisServer, timeout: float = 20, acked: bool = False) -> None:
    """Until the replica is online (and, with ``acked``, has acknowledged every write)."""
    import redis

    c = redis.Redis(host="127.0.0.1", port=primary.port)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = c.info("replication")
            replica = info.get("slave0") or {}
            if replica.get("state") == "online" and \
                    (not acked or replica.get("offset", -1) >= info["master_repl_offset"]):
                return
            time.sleep(0.05)
    finally:
        c.close()
    raise RuntimeError("the replica never came online")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisReplica]]:
    primary = RedisServer(tmp_path / "primary")
    replica = RedisReplica(tmp_path / "replica", primary)
    primary.start()
    try:
        replica.start()
        wait_online(primary)
        yield primary, replica
    finally:
        replica.resume()
        replica.stop()
        primary.stop()


def test_wait_runs_on_the_connection_that_wrote(pair: tuple[RedisServer, RedisReplica],
                                                kek_file: Path) -> None:
    """WAIT counts what replicas acknowledged of *its own connection's* writes.

    Sent on a connection whose own writes are older (an earlier write, a
    PUBLISH), WAIT would answer at once with the replica that holds those.
    The store has one connection, shared by its threads (the agent's /metrics
    probe sends ROLE through it while a rotation writes), and holds it for a
    write and its WAIT: with the replica stalled (SIGSTOP), WAIT answers 0 and
    the write must be reported as failed.
    """
    from stek import Policy, init_ring, rotate

    primary, replica = pair
    store = open_store(primary.url + "&min_replicas=1&wait_timeout=500ms", kek_file=str(kek_file))
    assert isinstance(store, RedisStore)
    policy = Policy()
    init_ring(store, policy)
    assert health_of(store).replicas == 1  # the agent's /metrics probe, on the same connection
    wait_online(primary, acked=True)  # replicas acknowledge once a second
    replica.pause()
    try:
        with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
            rotate(store, now=time.time() + policy.rotate_every)
    finally:
        replica.resume()
    # Replicating again: the same write path, on the same connection, succeeds.
    assert rotate(store, now=time.time() + 2 * policy.rotate_every).changed


def _clients(server: RedisServer) -> list[dict[str, str]]:
    """The server's other clients (CLIENT LIST), as dicts, without the asking one."""
    import redis

    admin = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        me = admin.client_id()
        return [c for c in admin.client_list() if int(c["id"]) != me]
    finally:
        admin.close()


def test_store_uses_one_connection_for_commands_and_its_watch(redis_server: RedisServer,
                                                               kek_file: Path) -> None:
    """Reads, writes and the change watch share one RESP3 connection, and survive its loss.

    A fleet of hosts is then one client per host on the store.  Killed
    server-side (CLIENT KILL), the connection is replaced on the next
    command, and the watch subscribes again on the new one: the next change
    by another writer is still announced.
    """
    import threading

    from stek import Policy, init_ring, rotate

    store = open_store(redis_server.url, kek_file=str(kek_file))
    other = open_store(redis_server.url, kek_file=str(kek_file))
    assert isinstance(store, RedisStore)
    changes = threading.Semaphore(0)
    # Rotations run up to 4 slots (4 minutes) ahead of the clock: within what
    # readers accept (publish_ahead plus the allowed clock skew).
    step_s = 60
    init_ring(store, Policy(rotate_every=step_s, accept_for=1800, publish_ahead=600))
    watch = store.subscribe(changes.release)
    try:
        assert watch.connected.wait(5)
        assert changes.acquire(timeout=5)  # ready() notifies
        t = time.time()
        for step in (1, 2):
            assert rotate(other, now=t + step * step_s).changed
            assert changes.acquire(timeout=5)
            assert store.read().generation == other.read().generation
        assert rotate(store, now=t + 3 * step_s).changed
        other.close()
        mine = _clients(redis_server)
        assert len(mine) == 1, mine
        assert mine[0]["resp"] == "3" and mine[0]["sub"] == "1", mine[0]

        import redis

        admin = redis.Redis(host="127.0.0.1", port=redis_server.port)
        admin.client_kill_filter(_id=int(mine[0]["id"]))
        admin.close()
        assert store.read().generation >= 3  # reconnects for the read
        deadline = time.monotonic() + 5
        while not (watch.connected.is_set() and
                   [c["sub"] for c in _clients(redis_server)] == ["1"]):
            assert time.monotonic() < deadline, _clients(redis_server)
            time.sleep(0.05)
        while changes.acquire(timeout=0.5):
            pass  # the re-subscription notified
        again = open_store(redis_server.url, kek_file=str(kek_file))
        assert rotate(again, now=t + 4 * step_s).changed
        again.close()
        assert changes.acquire(timeout=5)
        assert store.read().generation == rotate(store, now=t + 4 * step_s).ring.generation
        assert len(_clients(redis_server)) == 1
    finally:
        watch.close()
        store.close()


class _NoResp3Redis(RedisServer):
    """A server without HELLO, as Redis 5 and earlier are: no RESP3."""

    def _cmd(self) -> list[str]:
        return [*super()._cmd(), "--rename-command", "HELLO", '""']


def test_server_without_resp3_is_named_in_one_line(tmp_path: Path, kek_file: Path) -> None:
    srv = _NoResp3Redis(tmp_path / "old")
    srv.start()
    try:
        store = open_store(srv.url, kek_file=str(kek_file))
        with pytest.raises(StoreUnavailable) as info:
            store.read()
        text = str(info.value)
        assert "\n" not in text
        assert "stek needs Redis 6 or later" in text and "cannot read" in text
    finally:
        srv.stop()


def test_forked_child_opens_its_own_connection(redis_server: RedisServer, kek_file: Path) -> None:
    """A pre-fork server's store: the child never speaks on the parent's socket.

    Parent and child both watch and read after the fork; each gets its own
    connection, each is told of the other's rotation, and neither reads a
    reply meant for the other.
    """
    import threading

    from stek import Policy, init_ring, rotate

    store = open_store(redis_server.url, kek_file=str(kek_file))
    init_ring(store, Policy(rotate_every=60, accept_for=1800, publish_ahead=600))
    changes = threading.Semaphore(0)
    watch = store.subscribe(changes.release)
    assert watch.connected.wait(5) and changes.acquire(timeout=5)
    t = time.time()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if all went well
        code = 1
        try:
            os.close(read)
            child_changes = threading.Semaphore(0)
            child_watch = store.subscribe(child_changes.release)
            if child_watch.connected.wait(5) and child_changes.acquire(timeout=5):
                os.write(write, b"w")  # subscribed: the parent may rotate
                gen = store.read().generation
                if child_changes.acquire(timeout=10) and store.read().generation > gen:
                    code = 0 if rotate(store, now=t + 2 * 60).changed else 2
            child_watch.close()
        finally:
            os._exit(code)
    os.close(write)
    try:
        assert os.read(read, 1) == b"w"
        for _ in range(20):  # the parent keeps using its connection meanwhile
            store.read()
        assert rotate(store, now=t + 60).changed
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
        assert changes.acquire(timeout=5)  # the child's rotation reached the parent
        deadline = time.monotonic() + 5
        while store.read().generation < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(_clients(redis_server)) == 1  # the child's connection is gone with it
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(read)
        watch.close()
        store.close()


def test_threads_sharing_the_connection_each_get_their_own_replies(redis_server: RedisServer,
                                                                   kek_file: Path) -> None:
    """Reads, health probes, writes and the watch's pushes, from many threads, on one socket.

    Each thread's replies must be its own (a read never returns ROLE's
    reply), every generation a thread reads is at least the last it read,
    and the watch hears of the other writer's rotations meanwhile.
    """
    import threading

    from stek import Policy, init_ring, rotate

    store = open_store(redis_server.url, kek_file=str(kek_file))
    other = open_store(redis_server.url, kek_file=str(kek_file))
    first = init_ring(store, Policy(rotate_every=60, accept_for=1800, publish_ahead=600)).ring
    heard = threading.Semaphore(0)
    watch = store.subscribe(heard.release)
    assert watch.connected.wait(5)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        last = 0
        try:
            while not stop.is_set():
                gen = store.read().generation
                assert gen >= last
                last = gen
                ep = health_of(store).endpoints[0]
                assert ep.reachable and ep.role == "primary", ep
                reads[0] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for th in threads:
        th.start()
    t = time.time()
    try:
        for step in range(1, 5):
            assert rotate(other, now=t + step * 60).changed
            time.sleep(0.1)
    finally:
        stop.set()
        for th in threads:
            th.join(10)
    assert errors == []
    assert reads[0] > 40
    assert store.read().generation == other.read().generation == first.generation + 4
    got = 0
    while heard.acquire(timeout=1):
        got += 1
    assert got >= 5  # ready(), then every rotation (some may be coalesced in one push read)
    watch.close()
    store.close()
    other.close()


#: A store watching, read and rotated by another writer, in a fresh process:
#: prints the reply parser its connection used.  argv: URL, KEK file, parser.
_PARSER_SCRIPT = r"""
import sys, threading, time
if sys.argv[3] == "python":
    sys.modules["hiredis"] = None  # as on a host without hiredis installed
else:
    import hiredis  # noqa: F401  (installed by the test extra: must be here)
from stek import Policy, init_ring, open_store, rotate
url, kek = sys.argv[1], sys.argv[2]
store, other = open_store(url, kek_file=kek), open_store(url, kek_file=kek)
first = init_ring(store, Policy(rotate_every=60, accept_for=1800, publish_ahead=600)).ring
changes = threading.Semaphore(0)
watch = store.subscribe(changes.release)
assert watch.connected.wait(5) and changes.acquire(timeout=5)
t = time.time()
for step in (1, 2):
    assert rotate(other, now=t + 60 * step).changed
    assert changes.acquire(timeout=5), "rotation not announced"
    assert store.read().generation == first.generation + step
print(type(store._chan._conn._parser).__name__)
watch.close()
"""


@pytest.mark.parametrize(("parser", "expected"), [("hiredis", "_HiredisParser"),
                                                  ("python", "_RESP3Parser")])
def test_change_watch_works_with_and_without_hiredis(redis_server: RedisServer, kek_file: Path,
                                                     parser: str, expected: str) -> None:
    """redis[hiredis] is a common install: the one-connection channel works with either parser.

    redis-py's hiredis parser takes the push handler the channel relies on
    from redis-py 6.2 on (pyproject's lower bound); before, the first
    command failed with an AttributeError.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PARSER_SCRIPT, redis_server.url, str(kek_file),
                           parser], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [expected]


def test_a_watch_closed_by_a_finalizer_mid_command_waits_for_the_reply(
        redis_server: RedisServer, kek_file: Path) -> None:
    """A garbage collection can run, between a command and its reply, an
    application's finalizer that closes the store's last watch (as an
    ``uninstall()`` in ``__del__`` does).  Before: its UNSUBSCRIBE went out on
    the shared connection right then and took the command's reply, and the
    command then waited for a reply already taken, until the socket timed out
    and the connection was dropped.  Now the UNSUBSCRIBE waits for the reply:
    the read returns the ring from the same connection, and the subscription
    still ends."""
    import gc
    import threading

    from stek import Policy, init_ring

    store = open_store(redis_server.url, kek_file=str(kek_file))
    assert isinstance(store, RedisStore)
    ring = init_ring(store, Policy()).ring
    watch = store.subscribe(lambda: None)
    try:
        assert watch.connected.wait(5)

        class Owner:
            """Closes the watch when collected."""

            def __init__(self) -> None:
                self.cycle = self

            def __del__(self) -> None:
                watch.close()

        chan = store._chan
        conn, epoch = chan._conn, chan._epoch
        assert conn is not None
        real_read = conn.read_response
        main = threading.current_thread()
        collected: list[bool] = []

        def read_response(*args: object, **kwargs: object) -> object:
            if threading.current_thread() is main and not collected:
                collected.append(True)
                gc.collect()  # the GET is sent, its reply not read yet
            return real_read(*args, **kwargs)

        conn.read_response = read_response
        try:
            with collection_paused():  # collected only where the probe collects
                Owner()
                assert not watch.stop_event.is_set()
                t = time.monotonic()
                assert store.read().generation == ring.generation
                took = time.monotonic() - t
        finally:
            del conn.read_response
        assert collected == [True] and watch.stop_event.is_set()
        assert chan._epoch == epoch, "the read had to reconnect"
        assert chan._subscribers == {}
        assert [c["sub"] for c in _clients(redis_server)] == ["0"]  # UNSUBSCRIBE was sent
        # The watch thread, waiting for the read's lock, outlives the finalizer's
        # join (WatchThread.close waits 2 s for it); then it ends.
        assert took < 10
        watch._thread.join(5)
        assert not watch._thread.is_alive()
    finally:
        watch.close()
        store.close()
