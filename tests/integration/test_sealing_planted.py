"""A KEK holder plants a key beyond the ring's policy in a real sealed store.

A real redis-server holds the sealed ring; a real stek server process
(tests/apps/fleet_server.py) serves from it.  Someone who holds the KEK and can
write the store seals a ring whose extra key is active or accepted longer
than the policy allows, or activates further ahead than ``publish_ahead``
(stek.schedule.check_windows).  The running server refuses that snapshot,
keeps the one it holds and goes on issuing and resuming under it; a fresh
reader (``stek status``) refuses it in one line.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from helpers.certs import Certs, client_context
from helpers.fleet_scenarios import ask, server_procs, shared
from helpers.processes import stek_cli
from helpers.store_servers import RedisServer, child_env, started
from helpers.waiting import wait_until
from stek import Keyring, Policy, init_ring
from stek.hazmat.libssl import libssl
from stek.keys import TicketKey, generate_key
from stek.stores.redis import RedisStore

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

POLICY = Policy(rotate_every=3600, accept_for=3600, publish_ahead=60)


def planted_key(kind: str, now: int, size: int) -> TicketKey:
    if kind == "active-too-long":
        return generate_key(size=size, activates_at=now - 60,
                            retires_at=now - 60 + 10 * POLICY.rotate_every,
                            expires_at=now - 60 + 10 * POLICY.rotate_every + POLICY.accept_for)
    if kind == "accepted-too-long":
        return generate_key(size=size, activates_at=now - 60,
                            retires_at=now - 60 + POLICY.rotate_every,
                            expires_at=now - 60 + POLICY.rotate_every + 30 * 86400)
    # activates a day ahead, far past publish_ahead (and any clock skew)
    return generate_key(size=size, activates_at=now + 86400,
                        retires_at=now + 86400 + POLICY.rotate_every,
                        expires_at=now + 86400 + POLICY.rotate_every + POLICY.accept_for)


@pytest.mark.parametrize("kind", ["active-too-long", "accepted-too-long", "too-far-ahead"])
def test_running_server_refuses_a_planted_key_and_keeps_resuming(
        certs: Certs, kek_file: Path, tmp_path: Path, kind: str) -> None:
    import redis as redis_py

    refused = {"active-too-long": "rotate_every", "accepted-too-long": "accept_for",
               "too-far-ahead": "publish_ahead"}[kind]
    server = RedisServer(tmp_path / "redis")
    with started(server):
        store = shared(server.url, kek_file)
        assert isinstance(store, RedisStore)
        ring = init_ring(store, POLICY).ring
        active = ring.encrypting_key(time.time())
        assert active is not None
        cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
        with server_procs(1, certs, server.url, kek_file, tmp_path) as (srv,):
            first = ask(srv.port, cctx)
            assert not first.reused and first.doc["generation"] == ring.generation

            # The KEK holder seals the bad ring and writes it with a bare client,
            # announcing it the way stek's writers do.
            key = planted_key(kind, int(time.time()), POLICY.key_size)
            planted = Keyring(POLICY, (*ring.keys, key), ring.generation + 1)
            blob = store.sealer.seal(planted.to_bytes(), store.ring_id, planted.generation)
            raw = redis_py.Redis(host="127.0.0.1", port=server.port)
            try:
                raw.set(store.key, blob)
                raw.publish(store.channel, "changed")
            finally:
                raw.close()

            # The server read it and refused it ...
            wait_until(lambda: "serving the last snapshot" in srv.log.read_text(), timeout=10,
                       step=0.05)
            log = srv.log.read_text()
            assert refused in log and "Traceback" not in log
            # ... and goes on under the snapshot it held: the old ticket resumes,
            # a new full handshake gets a ticket under the old active key.
            again = ask(srv.port, cctx, first.session)
            fresh = ask(srv.port, cctx)
            assert again.reused and not fresh.reused
            doc = fresh.doc
            assert doc["generation"] == ring.generation
            assert key.name.hex() not in doc["keys"]
            assert doc["counters"]["resumed"] == 1 and doc["counters"]["issued"] >= 2
            assert doc["failures"] == []
            assert fresh.session is not None
            assert libssl().session_ticket(fresh.session)[:16] == active.name

        # A fresh reader says why, in one line, and shows no key.
        out = stek_cli("status", "--store", server.url,
                       env=child_env(STEK_KEK_FILE=str(kek_file)))
        assert out.returncode in (1, 2), out
        assert out.stdout == ""
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert refused in lines[0] and key.name.hex() in lines[0]
        assert "Traceback" not in out.stderr
