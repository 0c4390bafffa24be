"""A 3-member etcd cluster as production runs it: TLS on client and peer URLs, users on.

Certificates and passwords are made by the test; every member listens on
127.0.0.1 only.  Servers connect with a read-only user, rotators and the
agent with a read-write one.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.certs import Certs
from helpers.failover_scenario import FailoverRun, check_ring, failover_run
from helpers.pki import Pki, make_pki, password_file
from helpers.store_servers import EtcdCluster, child_env
from helpers.waiting import wait_until
from stek import open_store
from stek.stores.base import health_of

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def cluster(tmp_path: Path, pki: Pki) -> Iterator[EtcdCluster]:
    c = EtcdCluster(tmp_path / "etcd", pki)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_leader_and_quorum_loss_lose_no_handshake_and_no_key(
        cluster: EtcdCluster, certs: Certs, kek_file: Path, tmp_path: Path) -> None:
    def script(run: FailoverRun) -> None:
        run.mark("start")
        # The fleet at work: both servers answering, the rotators writing.
        wait_until(lambda: len(run.pids) == 2 and run.handshakes_since("start") >= 30
                   and run.rotated_ok_after(run.marks["start"]), timeout=60, step=0.05)
        leader = cluster.leader()
        run.mark("leader_killed")
        cluster.kill(leader)
        # A new leader elected (--election-timeout 500 ms): rotations succeed again
        # later than the 3 s the assertion below leaves for the election.
        wait_until(lambda: run.rotated_ok_after(run.marks["leader_killed"] + 3)
                   and run.handshakes_since("leader_killed") >= 30, timeout=60, step=0.05)
        second = next(i for i, m in enumerate(cluster.members) if m.proc is not None)
        run.mark("quorum_lost")
        cluster.kill(second)
        # No quorum: a rotator's pass fails (after the store's 2 s timeout), and
        # handshakes go on meanwhile.
        wait_until(lambda: run.rotation_failed_after(run.marks["quorum_lost"])
                   and run.handshakes_since("quorum_lost") >= 30, timeout=60, step=0.05)
        run.mark("quorum_back")
        for m in cluster.members:
            if m.proc is None:
                m.start_async()
        cluster.wait_healthy()
        # Rotation resumed: a key added after quorum came back; and enough handshakes
        # in all for the counts below to mean something.
        wait_until(lambda: run.added_after(run.marks["quorum_back"]) and run.handshakes >= 100,
                   timeout=60, step=0.05)

    run = failover_run(cluster.url, cluster.server_url, certs, kek_file, tmp_path, script)
    assert run.failures == []
    assert run.handshakes >= 100
    assert run.resumed >= run.handshakes - 2  # one full handshake per client thread
    assert len(run.pids) == 2
    check_ring(run, cluster.url, kek_file)
    # Rotation went on after the leader died, stopped without quorum, then resumed.
    after_leader = [t for t in run.rotate_ok
                    if run.marks["leader_killed"] + 3 < t < run.marks["quorum_lost"]]
    assert after_leader
    back = [t for t in run.rotate_ok if t > run.marks["quorum_back"]]
    assert back and min(back) - run.marks["quorum_back"] < 15
    assert any(a > run.marks["quorum_back"] for _, a in run.added)


def test_health_names_the_leader_and_the_user(cluster: EtcdCluster, kek_file: Path) -> None:
    store = open_store(cluster.url, kek_file=str(kek_file))
    h = health_of(store)
    assert h.tls and h.user == "stek" and h.identity == "etcd:/stektest/keyring"
    assert [e.reachable for e in h.endpoints] == [True, True, True]
    leader = cluster.members[cluster.leader()]
    assert h.primary == f"127.0.0.1:{leader.port}"
    cluster.kill(0)
    h = health_of(store)
    assert [e.reachable for e in h.endpoints] == [False, True, True]
    assert cluster.password not in repr(h)


def test_eight_racing_stek_rotate_processes_write_one_key_per_slot(
        cluster: EtcdCluster, kek_file: Path) -> None:
    """8 real ``stek rotate`` processes at once, at each of 3 slot boundaries, on the
    TLS + password URL (client certificate, key and password from files, the KEK
    from $STEK_KEK_FILE): each slot gets exactly one key, none lost, no secret shown."""
    import itertools
    import re

    from stek import Policy, init_ring
    from stek.schedule import next_change

    policy = Policy(rotate_every=3, accept_for=120, publish_ahead=2)
    store = open_store(cluster.url, kek_file=str(kek_file))
    first = init_ring(store, policy).ring
    env = child_env(STEK_KEK_FILE=str(kek_file))
    added: dict[str, int] = {}  # key name -> how many processes said they added it
    writes = 0  # runs that changed the ring (one write each, maybe several keys)
    rounds = 3
    for _ in range(rounds):
        due = next_change(store.read().keys, policy, time.time())
        time.sleep(max(0.0, due - time.time()) + 0.05)  # a slot boundary has just passed
        procs = [subprocess.Popen([sys.executable, "-m", "stek", "rotate", "--store", cluster.url],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(8)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            for secret in (cluster.password, cluster.root_pw, kek_file.read_text().strip()):
                assert secret not in out + err
            names = re.findall(r"^added ([0-9a-f]{32}) ", out, re.M)
            writes += bool(names)
            for name in names:
                added[name] = added.get(name, 0) + 1
    ring = store.read()
    # A slot ends on a multiple of rotate_every; each key is active until its
    # slot's end (stek.schedule.plan).  One key per slot: no two share an end,
    # no two active windows overlap.
    keys = sorted(ring.keys, key=lambda k: k.activates_at)
    ends = [k.retires_at for k in keys]
    assert len(ends) == len(set(ends)), "two keys for one slot"
    assert all(e % policy.rotate_every == 0 for e in ends)
    assert all(b.activates_at >= a.retires_at for a, b in itertools.pairwise(keys))
    assert len(added) >= rounds and set(added.values()) == {1}, added  # one writer per key
    # Every key a process reported is there, and no other was written.
    assert set(added) == {k.name.hex() for k in keys} - {k.name.hex() for k in first.keys}
    assert ring.generation == first.generation + writes  # no write lost or overwritten


def test_migrate_from_a_file_into_the_cluster_and_back_shows_no_secret(
        cluster: EtcdCluster, kek_file: Path, tmp_path: Path) -> None:
    """``stek migrate`` over TLS with client certificates: file -> etcd cluster (the
    password in a file) -> another file (the password in $STEK_STORE_PASSWORD); every
    key and the policy carried over, and neither password, KEK nor key bytes in
    what it prints."""
    import base64

    from stek import Policy, init_ring, rotate

    step, base = 60, 28_333_334 * 60
    src = open_store(f"file:{tmp_path / 'src.json'}")
    init_ring(src, Policy(rotate_every=step, accept_for=600, publish_ahead=30), now=base)
    for i in range(1, 3):
        rotate(src, now=base + i * step)
    ring = src.read()
    back_url = f"file:{tmp_path / 'back.json'}"
    env = child_env(STEK_KEK_FILE=str(kek_file))
    secrets = [cluster.password, cluster.root_pw, kek_file.read_text().strip()]
    for k in ring.keys:
        for material in (k.aes_key, k.hmac_key):
            secrets += [material.hex(), base64.b64encode(material).decode()]
    url_env = cluster.url.replace(f"&password_file={cluster.pw_file}", "")
    assert "password" not in url_env
    outputs = []
    for frm, to, extra in ((src.url, cluster.url, {}),
                           (url_env, back_url, {"STEK_STORE_PASSWORD": cluster.password})):
        proc = subprocess.run([sys.executable, "-m", "stek", "migrate", "--from", frm,
                               "--to", to], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert f"copied {len(ring.keys)} key(s)" in proc.stdout
        outputs.append(proc.stdout + proc.stderr)
    # In the cluster, sealed, and readable by the servers' read-only user.
    in_cluster = open_store(cluster.server_url, kek_file=str(kek_file)).read()
    assert in_cluster.keys == ring.keys and in_cluster.policy == ring.policy
    back = open_store(back_url).read()
    assert back.keys == ring.keys and back.policy == ring.policy
    assert src.read().keys == ring.keys  # the source is untouched
    raw = b"".join(cluster.raw_values().values())
    assert raw.startswith(b"STEKSEAL") and ring.keys[0].aes_key not in raw
    for out in outputs:
        for secret in secrets:
            assert secret not in out


def _status(url: str, kek_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stek", "status", "--store", url],
                          env=child_env(STEK_KEK_FILE=str(kek_file)), capture_output=True,
                          text=True, timeout=60)


def test_wrong_ca_certificate_or_password_is_one_line_without_secret(
        cluster: EtcdCluster, pki: Pki, kek_file: Path, tmp_path: Path) -> None:
    bad_pw, bad = password_file(tmp_path, "wrong")
    cases = {
        "certificate verify failed": cluster.url_for("stektest", cacert=pki.other_ca),
        "TLS handshake failed": cluster.url_for("stektest", cert=pki.other_client_cert,
                                                key=pki.other_client_key),
        "authentication failed": cluster.url_for("stektest", pw_file=bad_pw),
    }
    for expected, url in cases.items():
        proc = _status(url, kek_file)
        assert proc.returncode in (1, 2), proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert expected in lines[0]
        for secret in (bad, cluster.password, cluster.root_pw):
            assert secret not in proc.stderr + proc.stdout
    ok = _status(cluster.url, kek_file)
    assert "no keyring yet" in ok.stderr  # reached and authenticated: only the ring is missing


def test_status_and_metrics_show_store_health(cluster: EtcdCluster, kek_file: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from stek import Policy, init_ring
    from stek.agent import Agent, AgentCollector

    store = open_store(cluster.url, kek_file=str(kek_file))
    init_ring(store, Policy())
    proc = _status(cluster.url, kek_file)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "health      etcd, TLS on, authenticated as stek" in out
    leader = cluster.members[cluster.leader()]
    assert f"leader: 127.0.0.1:{leader.port}" in out
    assert out.count(" up") >= 3
    reg = CollectorRegistry()
    reg.register(AgentCollector(Agent(store, policy=Policy())))
    text = generate_latest(reg).decode()
    assert (f'stek_store_endpoint_up{{endpoint="127.0.0.1:{leader.port}",role="leader",'
            f'tls="1",user="stek"}} 1.0') in text
    for secret in (cluster.password, cluster.root_pw):
        assert secret not in out + text
