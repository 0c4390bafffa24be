"""An etcd store used before fork(): parent and children never share a connection.

A pre-fork server (gunicorn, uWSGI, multiprocessing 'fork') installs first,
then forks its workers.  The etcd client's pooled keep-alive connection is
inherited: if both sides sent requests on it, each would take whichever
reply came first.  Run against a real etcd, with real forks.
"""

from __future__ import annotations

import os
import ssl
import traceback
from pathlib import Path

import pytest

from helpers.certs import Certs, client_context, server_context
from helpers.store_servers import EtcdServer
from helpers.tls_peers import connect, serving
from stek import Policy, init_ring, install, open_store
from stek.stores.etcd import EtcdStore

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

CHILDREN = 4
ROUNDS = 150


def exercise(store: EtcdStore, names: list[bytes], generation: int) -> str | None:
    """Reads and member probes in turn; what went wrong, or None."""
    try:
        for _ in range(ROUNDS):
            ring = store.read()
            if [k.name for k in ring.keys] != names or ring.generation != generation:
                return f"read another ring: generation {ring.generation}"
            health = store.health()
            if [e.role for e in health.endpoints] != ["leader"]:
                return f"member status answered {health.endpoints}"
    except Exception:
        return traceback.format_exc(limit=3)
    return None


def test_forked_children_and_parent_each_get_their_own_replies(
        etcd_server: EtcdServer, kek_file: Path) -> None:
    ring = init_ring(open_store(etcd_server.url, kek_file=str(kek_file)),
                     Policy(rotate_every=3600, accept_for=3600, publish_ahead=60)).ring
    names = [k.name for k in ring.keys]
    store = open_store(etcd_server.url, kek_file=str(kek_file))
    assert isinstance(store, EtcdStore)
    store.read()  # the pooled connection the children inherit
    pids: dict[int, int] = {}
    for _ in range(CHILDREN):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                os.close(r)
                problem = exercise(store, names, ring.generation)
                os.write(w, (problem or "").encode()[:4000])
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        pids[pid] = r
    problems = [exercise(store, names, ring.generation)]
    for pid, r in pids.items():
        with os.fdopen(r, "rb") as f:
            problems.append(f.read().decode() or None)
        assert os.waitpid(pid, 0)[1] == 0
    assert problems == [None] * (CHILDREN + 1), problems
    assert exercise(store, names, ring.generation) is None  # the parent's connection still serves


def test_installed_before_fork_children_resume_and_follow(
        etcd_server: EtcdServer, kek_file: Path, certs: Certs) -> None:
    """install(), then fork: each child serves the ring and reads the store on its own."""
    init_ring(open_store(etcd_server.url, kek_file=str(kek_file)),
              Policy(rotate_every=3600, accept_for=3600, publish_ahead=60))
    ctx = server_context(certs)
    inst = install(ctx, open_store(etcd_server.url, kek_file=str(kek_file)))
    try:
        pids = []
        for _ in range(CHILDREN):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    cctx = client_context(certs, ssl.TLSVersion.TLSv1_3)
                    with serving(ctx) as srv:
                        first = connect(srv.port, cctx)
                        for _ in range(ROUNDS // 3):
                            inst.refresh()
                        again = connect(srv.port, cctx, first.session)
                    ok = again.reused and inst.counters.resumed >= 1 and inst.store_ok
                    code = 0 if ok else 3
                except Exception:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            pids.append(pid)
        for _ in range(ROUNDS // 3):
            inst.refresh()
        assert [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids] == \
            [0] * CHILDREN
    finally:
        inst.uninstall()
