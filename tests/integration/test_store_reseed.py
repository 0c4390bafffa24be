"""A fleet store that comes back empty never splits the fleet.

Real redis-server (without persistence, restarted empty; with persistence,
restarted; the key deleted) and real etcd (the key deleted), with a real
``Agent`` and two Python servers, each with a store connection of its own
as separate processes would have: server A runs through the event, server
B starts after it.  The agent writes its last ring back (same keys, same
policy, a generation above every one seen), so a ticket A issued before
the event resumes on B, tickets resume both ways afterwards, and the agent
goes on rotating.
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import stek
from helpers.certs import Certs, client_context, server_context
from helpers.store_servers import EtcdServer, RedisServer
from helpers.tls_peers import TLSServer, connect, serving
from helpers.waiting import holds_within as wait_for
from stek.agent import Agent, AgentCollector, MetricsServer
from stek.installation import Installation
from stek.keyring import Keyring
from stek.rotation import init_ring, revoke, rotate
from stek.schedule import Policy
from stek.stores import open_store

pytestmark = pytest.mark.servers

TLS12 = ssl.TLSVersion.TLSv1_2
#: Not the agent's default policy (a ring re-created from scratch would lose
#: it), with slots short enough to see the agent rotate within the test.
POLICY = Policy(rotate_every=10, accept_for=120, publish_ahead=5)


class VolatileRedis(RedisServer):
    """redis-server with no persistence at all: a restart comes back empty."""

    def _cmd(self) -> list[str]:
        return [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
                str(self.dir), "--save", "", "--appendonly", "no", "--daemonize", "no"]


def _redis_del(server: RedisServer) -> None:
    import redis

    c = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        for key in c.scan_iter("stektest*"):
            c.delete(key)
    finally:
        c.close()


def _etcd_delete(server: EtcdServer) -> None:
    everything = base64.b64encode(b"\0").decode()
    server._post("/v3/kv/deleterange", {"key": everything, "range_end": everything})


def _restart(server: RedisServer) -> None:
    server.stop()
    server.start()


#: name -> (server class, the event)
EVENTS: dict[str, tuple[type, Callable[..., None]]] = {
    "redis-restarted-empty": (VolatileRedis, _restart),
    "redis-persistent-restarted": (RedisServer, _restart),
    "redis-del": (RedisServer, _redis_del),
    "etcd-delete": (EtcdServer, _etcd_delete),
}


class Fleet:
    """A store, an agent running in a thread, and Python servers on their own connections."""

    def __init__(self, url: str, kek_file: Path, certs: Certs, stack: ExitStack) -> None:
        self.url, self.kek_file, self.certs, self.stack = url, kek_file, certs, stack
        self.agent = Agent(self.store())
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()
        stack.callback(self._stop_agent)

    def _stop_agent(self) -> None:
        self.agent.stop()
        self.thread.join(10)

    def store(self) -> stek.KeyStore:
        s = open_store(self.url, kek_file=str(self.kek_file))
        self.stack.callback(s.close)
        return s

    def server(self, *, rotate: bool = False) -> tuple[Installation, TLSServer]:
        ctx = server_context(self.certs)
        inst = stek.install(ctx, self.store(), rotate=rotate)
        self.stack.callback(inst.uninstall)
        return inst, self.stack.enter_context(serving(ctx))

    def stored(self) -> Keyring | None:
        """The ring in the store, read by a connection with no memory (a fresh process)."""
        s = open_store(self.url, kek_file=str(self.kek_file))
        try:
            return s.read()
        except stek.StekError:
            return None
        finally:
            s.close()


@contextmanager
def fleet(kind: str, tmp_path: Path, kek_file: Path,
          certs: Certs) -> Iterator[tuple[Fleet, object]]:
    cls, _ = EVENTS[kind]
    server = cls(tmp_path / "store")
    server.start()
    try:
        with ExitStack() as stack:
            url = server.url
            first = open_store(url, kek_file=str(kek_file))
            init_ring(first, POLICY)
            for _ in range(3):  # a few generations, as a ring that lived a while
                init_ring(first, POLICY, force=True)
            first.close()
            yield Fleet(url, kek_file, certs, stack), server
    finally:
        server.stop()


def resumes(srv: TLSServer, inst: Installation, session: ssl.SSLSession | None,
            cctx: ssl.SSLContext) -> bool:
    """Whether ``session``'s ticket resumes on ``srv``, counted by stek's callback."""
    before = inst.counters.resumed
    r = connect(srv.port, cctx, session)
    return r.reused and inst.counters.resumed == before + 1


@pytest.mark.parametrize("kind", list(EVENTS))
def test_store_back_empty_does_not_split_the_fleet(
        kind: str, tmp_path: Path, kek_file: Path, certs: Certs, no_kek_env: None,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cctx = client_context(certs, TLS12)
    with fleet(kind, tmp_path, kek_file, certs) as (f, server):
        a, srv_a = f.server()
        assert wait_for(lambda: f.agent.passes > 0 and len(a.ring) > 0)
        before = f.stored()
        assert before is not None and before.policy == POLICY
        ticket_a = connect(srv_a.port, cctx).session
        assert resumes(srv_a, a, ticket_a, cctx)

        EVENTS[kind][1](server)

        # Every process converges on one ring holding the keys of before, under
        # the same policy, with no restart.
        names = {k.name for k in before.keys}
        assert wait_for(lambda: (r := f.stored()) is not None
                        and names <= {k.name for k in r.keys}), f.stored()
        after = f.stored()
        assert after is not None and after.policy == POLICY
        assert after.generation >= before.generation
        b, srv_b = f.server()
        assert wait_for(lambda: b.ring.generation == after.generation)
        assert wait_for(lambda: a.ring.generation == after.generation)
        assert wait_for(lambda: f.agent.store_error is None), f.agent.store_error

        # Tickets resume across the server that ran through it and the one after.
        assert resumes(srv_b, b, ticket_a, cctx)
        assert resumes(srv_a, a, connect(srv_b.port, cctx).session, cctx)
        assert resumes(srv_b, b, connect(srv_a.port, cctx).session, cctx)

        reseeded = [r.getMessage() for r in caplog.records if "re-seeded" in r.getMessage()]
        if kind == "redis-persistent-restarted":
            assert reseeded == [] and after.generation == before.generation
        else:
            assert len(reseeded) == 1, reseeded  # said once, in one line
            assert after.generation > before.generation
            page = MetricsServer(f.agent, "127.0.0.1", 0)  # and on /healthz, still 200
            try:
                status, body, _ = page.app("/healthz")
            finally:
                page.close()
            assert status == 200 and body.startswith(b"ok\n") and b"re-seeded" in body
            metrics = CollectorRegistry()
            metrics.register(AgentCollector(f.agent))
            assert metrics.get_sample_value("stek_store_reseeds_total") == 1

        # Rotation goes on: the agent adds the next slot's key (within a slot)
        # and both servers follow.
        rotations = f.agent.rotations
        assert wait_for(lambda: f.agent.rotations > rotations, 2 * POLICY.rotate_every)
        assert wait_for(lambda: f.agent.store_error is None), f.agent.store_error
        latest = f.stored()
        assert latest is not None and latest.generation > after.generation
        assert wait_for(lambda: a.ring.generation == b.ring.generation == latest.generation)


def test_every_agent_restarted_too_still_no_split(
        tmp_path: Path, kek_file: Path, certs: Certs, no_kek_env: None) -> None:
    """A store without persistence and an agent that lost its memory too: the new
    ring is numbered from the clock, above the old one, so the server that ran
    through it takes it, and tickets resume across it and a server started after."""
    cctx = client_context(certs, TLS12)
    with fleet("redis-restarted-empty", tmp_path, kek_file, certs) as (f, server):
        a, srv_a = f.server()
        assert wait_for(lambda: f.agent.passes > 0 and len(a.ring) > 0)
        before = f.stored()
        assert before is not None
        f._stop_agent()
        _restart(server)  # type: ignore[arg-type]
        fresh = Agent(f.store())  # no memory of the ring: creates one
        fresh.step()
        after = f.stored()
        assert after is not None and after.generation > before.generation
        b, srv_b = f.server()
        assert wait_for(lambda: a.ring.generation == b.ring.generation == after.generation)
        assert resumes(srv_b, b, connect(srv_a.port, cctx).session, cctx)
        assert resumes(srv_a, a, connect(srv_b.port, cctx).session, cctx)


def test_rotating_server_reseeds_without_an_agent(
        tmp_path: Path, kek_file: Path, certs: Certs, no_kek_env: None) -> None:
    """rotate=True servers write the ring back themselves; a reader follows."""
    cctx = client_context(certs, TLS12)
    with fleet("redis-del", tmp_path, kek_file, certs) as (f, server):
        f._stop_agent()
        rot, srv_rot = f.server(rotate=True)
        reader, srv_reader = f.server()
        assert wait_for(lambda: len(rot.ring) > 0 and reader.ring == rot.ring)
        before = rot.ring
        _redis_del(server)  # type: ignore[arg-type]
        assert wait_for(lambda: (r := f.stored()) is not None
                        and r.keys == before.keys and r.policy == POLICY)
        assert wait_for(lambda: reader.ring.generation == rot.ring.generation
                        > before.generation)
        assert resumes(srv_reader, reader, connect(srv_rot.port, cctx).session, cctx)


@pytest.mark.parametrize("kind", ["redis-del", "etcd-delete"])
def test_revoked_key_never_comes_back_from_an_old_snapshot(
        kind: str, tmp_path: Path, kek_file: Path, certs: Certs, no_kek_env: None) -> None:
    """A rotating process holding the ring from before a revocation (it was cut off
    meanwhile) finds the store empty and writes its old snapshot back, revoked key
    and all; the agent, which saw the revocation, takes the key out again, and a
    reader that saw it never serves it."""
    with fleet(kind, tmp_path, kek_file, certs) as (f, server):
        assert wait_for(lambda: f.agent.passes > 0)
        stale, reader = f.store(), f.store()
        old = rotate(stale).ring  # the stale process's snapshot
        reader.read()
        leaked = old.encrypting_key(time.time())
        assert leaked is not None
        revoke(f.store(), [leaked.name])
        assert wait_for(lambda: leaked.name in f.agent.revoked_seen)
        assert leaked.name not in {k.name for k in reader.read().keys}
        with f.agent._lock:  # the agent waits: the stale process wins the race
            EVENTS[kind][1](server)
            back = rotate(stale).ring
        assert leaked.name in {k.name for k in back.keys}
        # The reader that saw the revocation drops the key at once ...
        assert leaked.name not in {k.name for k in reader.read().keys}
        # ... and the agent writes the ring without it, within its re-read bound.
        f.agent.wake_event.set()
        assert wait_for(lambda: (r := f.stored()) is not None
                        and r.generation > back.generation
                        and leaked.name not in {k.name for k in r.keys})
        assert wait_for(lambda: f.agent.store_error is None), f.agent.store_error
        # The stale process learns it too, and never writes the key again.
        assert leaked.name not in {k.name for k in rotate(stale).ring.keys}
        assert f.agent.revocations == 1
