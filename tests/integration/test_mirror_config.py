"""A mirror is a mirror by configuration, and no writer ever replaces one.

Workers that start before ``stek agent --mirror`` has written the file (the
fleet store unreachable at boot) must neither create a ring at its path nor
wait for a lock they may not take; a writer that found no mirror must not
replace one that appeared since.  Real processes: redis-server, the agent's
passes and worker processes (one running as another user, as with
``--mirror-group``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.certs import Certs, client_context, server_context
from helpers.fleet_scenarios import ServerProc, ask
from helpers.store_servers import RedisServer, child_env
from helpers.tls_peers import connect, serving
from helpers.waiting import wait_until
from stek import Policy, init_ring, install, open_store, rotate
from stek._atomic import write_file
from stek.agent import Agent
from stek.errors import ConfigError, StoreUnavailable
from stek.mirror import MirroredRing, mirror_bytes, mirror_source, open_mirror
from stek.stores import FileStore, MemoryStore

pytestmark = pytest.mark.usefixtures("no_kek_env")

POLICY = Policy(rotate_every=120, accept_for=3600, publish_ahead=600)
AGENT_USER = "daemon"
WORKER_USER = "nobody"
SHARED_GROUP = "nogroup"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.servers
def test_worker_started_before_the_mirror_never_makes_a_ring_there(
        redis_server: RedisServer, kek_file: Path, certs: Certs, tmp_path: Path) -> None:
    """The fleet store is down at boot: the agent writes no mirror; the worker
    (file:PATH?mirror=1, the hooks' way: rotate only what is no mirror) waits for it,
    then follows it, and a restarted agent takes the file up again."""
    path = tmp_path / "run" / "mirror.json"
    url = f"file:{path}?mirror=1"
    fleet = open_store(redis_server.url, kek_file=str(kek_file))
    agent = Agent(fleet, policy=POLICY)
    mirror = open_mirror(f"file:{path}", None, fleet)
    mirror.attach(agent)
    with pytest.raises(StoreUnavailable):
        agent.step()  # the store is down: nothing to mirror
    assert not path.exists()

    assert mirror_source(url) is not None  # a mirror before it exists
    ctx = server_context(certs)
    inst = install(ctx, url, rotate=mirror_source(url) is None)
    try:
        assert not inst.rotate and not inst.store_ok
        with pytest.raises(MirroredRing, match=r"mirror=1 is a mirror .* read-only here"):
            rotate(FileStore.from_url(f"{path}?mirror=1"), create=POLICY)
        assert not path.exists()

        redis_server.start()
        agent.step()
        ring = fleet.read()
        assert mirror_source(f"file:{path}") == fleet.url
        wait_until(lambda: inst.ring.generation == ring.generation, timeout=5)
        cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
        with serving(ctx) as srv:
            first = connect(srv.port, cctx)
            assert connect(srv.port, cctx, first.session).reused
        assert inst.counters.resumed >= 1
        # The next outage: the worker never rotates the mirror, however due.
        redis_server.kill()
        assert inst.refresh().generation == ring.generation
        assert mirror_source(f"file:{path}") == fleet.url
    finally:
        inst.uninstall()
    # A restarted agent takes its mirror up again.
    assert open_mirror(f"file:{path}", None, fleet).path == path


def test_a_rotation_rechecks_for_a_mirror_under_the_lock(tmp_path: Path) -> None:
    """A writer that found no mirror, then waited for the lock while the agent wrote
    one, refuses it: the marker stays."""
    path = tmp_path / "mirror.json"
    writer = FileStore(path)
    init_ring(writer, POLICY, now=1_900_000_000)
    ring = MemoryStore()
    fleet_ring = init_ring(ring, POLICY, now=1_900_000_000).ring
    errors: list[BaseException] = []

    def rotate_late() -> None:
        try:
            rotate(writer, now=1_900_000_000 + 3 * 120)
        except BaseException as exc:
            errors.append(exc)

    with writer.locked():
        t = threading.Thread(target=rotate_late)
        t.start()
        lock_inode = path.with_name(path.name + ".lock").stat().st_ino
        wait_until(lambda: _flock_waiters(lock_inode) > 0, timeout=5, step=0.005)
        # The agent's write, as Mirror.write does it under the lock (held here).
        write_file(path, mirror_bytes(fleet_ring, "redis://127.0.0.1:6379/0?prefix=stek"))
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], MirroredRing), errors
    assert mirror_source(path) == "redis://127.0.0.1:6379/0?prefix=stek"
    assert FileStore(path).read() == fleet_ring


def _flock_waiters(inode: int) -> int:
    """flock(2) requests blocked right now on the file with this inode (/proc/locks
    marks them '->' and names the file MAJOR:MINOR:INODE, proc_locks(5)); other
    tests running at the same time may be waiting on locks of their own."""
    return sum(1 for ln in Path("/proc/locks").read_text().splitlines()
               if "->" in ln and "FLOCK" in ln
               and any(f.count(":") == 2 and f.rsplit(":", 1)[1] == str(inode)
                       for f in ln.split()))


def test_group_worker_of_another_user_follows_the_mirror_it_cannot_lock(
        certs: Certs, tmp_path: Path) -> None:
    """--mirror-group: the worker (another user, in the group) cannot create the
    lock file in the agent's 2750 directory.  Started before the mirror exists,
    with rotate=True (an ordinary file:PATH?owner=AGENT, so the hooks rotate), it
    must still load the mirror once the agent writes it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: chown and setuid")
    agent_uid = pwd.getpwnam(AGENT_USER).pw_uid
    base = Path(tempfile.mkdtemp(prefix="stek-mirror-"))
    workers: list[ServerProc] = []
    try:
        os.chmod(base, 0o755)
        path = base / "run" / "mirror.json"
        mirror = open_mirror(f"file:{path}", SHARED_GROUP, MemoryStore())
        os.chown(path.parent, agent_uid, -1)
        env = child_env(FLEET_SERVER_USER=f"{WORKER_USER}:{SHARED_GROUP}")
        for i, query in enumerate((f"owner={AGENT_USER}", f"owner={AGENT_USER}&mirror=1")):
            workers.append(ServerProc(certs, f"file:{path}?{query}", env,
                                      tmp_path / f"worker{i}.log"))
        cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
        assert ask(workers[0].port, cctx).doc["generation"] == 0
        ring = init_ring(MemoryStore(), POLICY).ring
        assert mirror.write(ring)
        os.chown(path, agent_uid, -1)
        for w in workers:
            wait_until(lambda w=w: ask(w.port, cctx).doc["generation"] == ring.generation,
                       timeout=10, step=0.1)
        first = ask(workers[0].port, cctx)
        again = ask(workers[1].port, cctx, first.session)
        assert again.reused and again.doc["counters"]["resumed"] >= 1
        assert mirror_source(f"file:{path}?owner={AGENT_USER}") is not None
        for w in workers:
            assert "Traceback" not in w.log.read_text()
    finally:
        for w in workers:
            w.stop()
        shutil.rmtree(base)


def test_mirror_option_is_parsed_and_shown(tmp_path: Path) -> None:
    store = open_store(f"file:{tmp_path}/m.json?mirror=1")
    assert isinstance(store, FileStore) and store.mirror
    assert store.url == f"file:{tmp_path}/m.json?mirror=1"
    assert not FileStore.from_url(f"{tmp_path}/m.json?mirror=0").mirror
    assert FileStore("/run/stek/mirror.json").mirror  # the agent's default path
    with pytest.raises(ConfigError, match="mirror=1"):
        FileStore.from_url(f"{tmp_path}/m.json?mirror=maybe")
