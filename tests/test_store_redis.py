"""RedisStore against a real redis-server on 127.0.0.1 (started and killed by the tests)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers_fleet import RedisServer
from stek import ConfigError, StoreUnavailable, open_store
from stek.stores.base import health_of
from stek.stores.redis import RedisStore

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


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
    from conftest import free_port

    store = open_store(f"redis://127.0.0.1:{free_port()}/0", kek_file=str(kek_file))
    t = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.read()
    assert time.monotonic() - t < 3


def test_write_that_reaches_no_replica_does_not_count(server: RedisServer,
                                                      kek_file: Path) -> None:
    """min_replicas=1 on a primary without replicas: WAIT answers 0, the write is refused."""
    from stek import Policy, init_ring

    store = open_store(server.url + "&min_replicas=1&wait_timeout=0.2", kek_file=str(kek_file))
    with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
        init_ring(store, Policy())
    # Without replicas connected, the default (auto) counts the primary's word.
    auto = open_store(server.url, kek_file=str(kek_file))
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

    The store's pool is shared (the agent's /metrics probe sends ROLE through
    it while a rotation writes), so the connection a command is handed may not
    be the one the previous command used.  Modelled here: every checkout finds
    the connection released last taken by another user, and gets another idle
    one.  Sent on a connection whose own writes are older (an earlier write,
    a PUBLISH), WAIT answers at once with the replica that holds those; on the
    writing connection, with the replica stalled (SIGSTOP), it answers 0 and
    the write must be reported as failed.  (Which connection WAIT lands on
    depends on the commands before it: here the health probe's ROLE.)
    """
    from stek import Policy, init_ring, rotate

    primary, replica = pair
    store = open_store(primary.url + "&min_replicas=1&wait_timeout=0.5", kek_file=str(kek_file))
    assert isinstance(store, RedisStore)
    pool = store._client.connection_pool
    real = pool.get_connection

    def another_idle_connection(*args: object, **kwargs: object) -> object:
        taken = real()  # the one the pool would hand out: another user has it now
        other = real()
        pool.release(taken)
        return other

    pool.get_connection = another_idle_connection  # type: ignore[method-assign]
    policy = Policy()
    init_ring(store, policy)
    assert health_of(store).replicas == 1  # the agent's /metrics probe, through the same pool
    wait_online(primary, acked=True)  # replicas acknowledge once a second
    replica.pause()
    try:
        with pytest.raises(StoreUnavailable, match="0 of 1 replica"):
            rotate(store, now=time.time() + policy.rotate_every)
    finally:
        replica.resume()
    # Replicating again: the same write path, through the same pool, succeeds.
    assert rotate(store, now=time.time() + 2 * policy.rotate_every).changed
