"""A huge value in a real Redis is refused before it is transferred.

A writer without the KEK can store up to 512 MiB under the ring's key, with
the ring's genuine public header in front.  Read whole, every reader would
hold it (and decrypt it) on every re-read.  Readers take its size first and
refuse it: one line, memory bounded, and servers keep their last snapshot.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import pytest
import redis

from helpers.certs import Certs, client_context, server_context
from helpers.store_servers import EtcdServer, RedisServer, child_env, run_python
from helpers.tls_peers import connect, serving
from stek import Policy, StoreCorrupt, init_ring, install, open_store
from stek.cli import main as cli_main
from stek.stores.sealing import MAX_VALUE_BYTES

pytestmark = [pytest.mark.servers, pytest.mark.usefixtures("no_kek_env")]

KEY = "stektest:keyring"
#: Large enough that reading it whole shows in a reader's peak RSS at once.
HUGE = 64 * 1024 * 1024
#: What a reader's peak RSS may grow by, refusing it (KiB, as ru_maxrss on Linux).
BOUND_KIB = 8 * 1024


def inflate(port: int) -> None:
    """Grow the stored value to HUGE bytes, its genuine sealed prefix kept in front.

    SETRANGE pads on the server: this client never holds the value either.
    """
    c = redis.Redis(host="127.0.0.1", port=port)
    try:
        c.setrange(KEY, HUGE - 1, b"x")
    finally:
        c.close()


READER = """
import json, resource, sys
from stek import StekError, open_store
from integration.test_store_value_bound import inflate
store = open_store(sys.argv[1], kek_file=sys.argv[2])
store.read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
inflate(int(sys.argv[3]))
errors = []
for _ in range(3):
    try:
        store.read()
        errors.append(None)
    except StekError as exc:
        errors.append(str(exc))
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grew_kib": grew, "errors": errors}))
"""


def test_huge_value_is_refused_with_bounded_memory(redis_server: RedisServer,
                                                   kek_file: Path) -> None:
    init_ring(open_store(redis_server.url, kek_file=str(kek_file)),
              Policy(rotate_every=3600, accept_for=3600, publish_ahead=60))
    out = run_python(READER.replace("sys.argv[1]", repr(redis_server.url))
                     .replace("sys.argv[2]", repr(str(kek_file)))
                     .replace("sys.argv[3]", repr(str(redis_server.port))), child_env())
    got = json.loads(out)
    assert got["errors"][0] is not None
    assert all(e == got["errors"][0] for e in got["errors"])
    assert "larger than any sealed ring" in got["errors"][0]
    assert f"{HUGE} bytes" in got["errors"][0] and "\n" not in got["errors"][0]
    assert got["grew_kib"] < BOUND_KIB, got


def test_server_keeps_its_snapshot_and_cli_says_one_line(
        redis_server: RedisServer, kek_file: Path, certs: Certs,
        capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(redis_server.url, kek_file=str(kek_file))
    init_ring(store, Policy(rotate_every=3600, accept_for=3600, publish_ahead=60))
    ctx = server_context(certs)
    inst = install(ctx, open_store(redis_server.url, kek_file=str(kek_file)))
    try:
        cctx = client_context(certs, ssl.TLSVersion.TLSv1_2)
        with serving(ctx) as srv:
            first = connect(srv.port, cctx)
            ring = inst.ring
            inflate(redis_server.port)
            with pytest.raises(StoreCorrupt, match="larger than any sealed ring"):
                inst.refresh()
            assert inst.ring is ring and not inst.store_ok
            again = connect(srv.port, cctx, first.session)
            assert again.reused and inst.counters.resumed >= 1
    finally:
        inst.uninstall()
    assert cli_main(["status", "--store", redis_server.url, "--kek-file", str(kek_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stek: error: ") and err.count("\n") == 1
    assert "larger than any sealed ring" in err


class LargeEtcd(EtcdServer):
    """etcd with --max-request-bytes raised, as an operator may: 8 MiB values."""

    def _cmd(self) -> list[str]:
        return [*super()._cmd(), "--max-request-bytes", str(8 * 1024 * 1024)]


@pytest.mark.parametrize("size", [MAX_VALUE_BYTES + 1, 6 * 1024 * 1024])
def test_etcd_value_above_the_bound_is_refused(tmp_path: Path, kek_file: Path,
                                               size: int) -> None:
    """etcd takes values up to --max-request-bytes (1.5 MiB by default, raised
    here): above the bound a reader refuses one, a long reply unread."""
    srv = LargeEtcd(tmp_path / "etcd")
    srv.start()
    try:
        store = open_store(srv.url, kek_file=str(kek_file))
        init_ring(store, Policy(rotate_every=3600, accept_for=3600, publish_ahead=60))
        key = b"/stektest/keyring"
        genuine = srv.raw_values()[key]
        big = genuine + bytes(size - len(genuine))
        srv._post("/v3/kv/put", {"key": base64.b64encode(key).decode(),
                                 "value": base64.b64encode(big).decode()})
        reader = open_store(srv.url, kek_file=str(kek_file))
        for _ in range(2):  # and again, on the pool's next connection
            with pytest.raises(StoreCorrupt, match="larger than any sealed ring") as info:
                reader.read()
            assert "\n" not in str(info.value)
            assert (f"{size} bytes" if size == MAX_VALUE_BYTES + 1 else
                    f"more than {MAX_VALUE_BYTES} bytes") in str(info.value)
    finally:
        srv.stop()
