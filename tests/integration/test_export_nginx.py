"""nginx fed by ``stek export --format nginx`` and by the agent: real nginx 1.22 processes.

What these prove:
* the layout is byte-exact in both sizes (80: name|HMAC|AES, 48: name|AES|HMAC):
  nginx's tickets open with the ring (stek.ticket.open_ticket) and resume
  on a Python server running stek's callback on the same ring, and the
  other way round; a swapped HMAC/AES would fail both;
* two nginx instances fed by one export resume each other's tickets
  (Python client and ``openssl s_client -sess_out/-sess_in``);
* a rotation with reloads in the middle of a stream of reconnects loses no
  resumption, and tickets under the previous key are re-issued under the new one.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import pytest

import stek
from helpers.certs import TLS_VERSIONS, Certs, client_context, server_context
from helpers.export_checks import (
    assert_inspect_explains,
    assert_instances_resume_each_other,
    assert_resumes_both_ways,
    encrypting_name,
)
from helpers.tls_peers import TLSServer, s_client, s_client_reused
from helpers.web_servers import T0, Hit, get, live_store, make_store, nginx
from stek.agent import Agent, Target, TargetSpec
from stek.compat import nginx_session_id_context
from stek.export import export

pytestmark = pytest.mark.servers




@TLS_VERSIONS
def test_two_nginx_instances_resume_each_others_tickets(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    ring = make_store(tmp_path).read()
    out = tmp_path / "nginx-keys"
    export("nginx", ring, T0, out)
    cctx = client_context(certs, tls_version)
    with nginx(tmp_path, certs, out / "tickets.conf", "a") as a, \
            nginx(tmp_path, certs, out / "tickets.conf", "b") as b:
        assert_instances_resume_each_other(a.port, b.port, cctx, ring, T0)


@TLS_VERSIONS
def test_two_nginx_instances_with_s_client_sess_out_sess_in(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    ring = make_store(tmp_path).read()
    out = tmp_path / "nginx-keys"
    export("nginx", ring, T0, out)
    sess = tmp_path / "session.pem"
    with nginx(tmp_path, certs, out / "tickets.conf", "a") as a, \
            nginx(tmp_path, certs, out / "tickets.conf", "b") as b:
        full = s_client(a.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
        assert not s_client_reused(full) and sess.exists(), full
        again = s_client(b.port, tls_version, tmp_path, sess_in=sess, ca=certs.ca)
        assert s_client_reused(again), again


@pytest.mark.parametrize("size", [80, 48])
@TLS_VERSIONS
def test_nginx_and_stek_callback_resume_each_others_tickets(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion, size: int) -> None:
    """Byte-exact layout, both sizes: only the right name/HMAC/AES order passes both ways."""
    store = make_store(tmp_path, size)
    ring = store.read()
    out = tmp_path / "nginx-keys"
    export("nginx", ring, T0, out)
    cctx = client_context(certs, tls_version)
    sctx = server_context(certs)
    # OpenSSL resumes only within one session id context: take nginx's.
    sid = nginx_session_id_context(certs.cert)
    handle = stek.install(sctx, store, clock=lambda: T0, session_id_context=sid)
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx, TLSServer(sctx) as py:
        assert_resumes_both_ways(ngx.port, py, handle, cctx, ring, T0, size, sid)
    handle.uninstall()


class Stream:
    """A client reconnecting in a loop, always offering its latest session."""

    def __init__(self, port: int, cctx: ssl.SSLContext) -> None:
        self.port, self.cctx = port, cctx
        self.hits: list[Hit] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = None
        while not self._stop.is_set():
            try:
                hit = get(self.port, self.cctx, session)
            except Exception as exc:
                self.errors.append(repr(exc))
                time.sleep(0.05)
                continue
            self.hits.append(hit)
            session = hit.session
            time.sleep(0.01)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)

    def wait_hits(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.hits)
        while len(self.hits) < start + n:
            assert time.monotonic() < deadline, f"stream stalled: {self.errors[-3:]}"
            time.sleep(0.02)


def wait_encrypting(port: int, cctx: ssl.SSLContext, name: bytes, timeout: float = 20) -> None:
    """Until fresh connections get tickets under ``name`` (nginx finished reloading)."""
    deadline = time.monotonic() + timeout
    while get(port, cctx).name != name:
        assert time.monotonic() < deadline, f"nginx never switched to key {name.hex()}"
        time.sleep(0.05)


@TLS_VERSIONS
def test_rotation_with_reload_during_a_stream_of_reconnects(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    store = make_store(tmp_path)
    clock = [float(T0)]
    out = tmp_path / "nginx-keys"
    include = out / "tickets.conf"
    export("nginx", store.read(), T0, out)  # so nginx can start before the agent runs
    cctx = client_context(certs, tls_version)
    with nginx(tmp_path, certs, include, "a") as a, nginx(tmp_path, certs, include, "b") as b:
        reload = f"kill -HUP {a.pid} {b.pid}"
        target = Target(TargetSpec("nginx", out, reloads=(reload,)))
        agent = Agent(store, clock=lambda: clock[0], targets=[target])
        agent.step()  # the files nginx already has: nothing changes, nothing reloads
        assert target.applies == 0 and target.changes == 0
        old = store.read().encrypting_key(T0)
        assert old is not None
        kept = get(a.port, cctx)  # a ticket under the old key, kept for later
        assert kept.name == old.name
        with Stream(b.port, cctx) as stream:
            stream.wait_hits(10)
            # publish_ahead before the switch: the next key is added and published.
            clock[0] = old.retires_at - 30
            agent.step()
            assert target.applies == 1 and target.last_error is None
            ring = store.read()
            new = next(k for k in ring.keys if k.activates_at == old.retires_at)
            stream.wait_hits(20)
            # The switch: nginx now encrypts with the new key.
            clock[0] = old.retires_at + 1
            agent.step()
            assert target.applies == 2 and target.encrypting == new.name
            wait_encrypting(a.port, cctx, new.name)
            wait_encrypting(b.port, cctx, new.name)
            stream.wait_hits(20)
        assert not stream.errors, stream.errors[:3]
        resumed = [h.reused for h in stream.hits[1:]]
        assert all(resumed), f"{resumed.count(False)} of {len(resumed)} reconnects not resumed"
        # An old-key ticket was presented and answered with a new-key ticket.
        assert any(h.offered_name == old.name and h.name == new.name for h in stream.hits)
        # The ticket kept from before the rotation still resumes, re-issued under the new key.
        late = get(a.port, cctx, kept.session)
        assert late.reused and late.name == new.name
        assert "reconfiguring" in a.output() and "reconfiguring" in b.output()


@TLS_VERSIONS
def test_stek_inspect_explains_an_nginx_ticket(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """s_client's -sess_out file from real nginx: resume under the exported key, then,
    once that key left the ring, a full handshake for an unknown key (inspect's
    clock is the real one, so the ring is made for now)."""
    store, now = live_store(tmp_path)
    ring = store.read()
    enc = encrypting_name(ring, now)
    out = tmp_path / "nginx-keys"
    export("nginx", ring, now, out)
    sess = tmp_path / "sess.pem"
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx:
        full = s_client(ngx.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
    assert sess.exists(), full
    assert_inspect_explains(sess, store, enc, tls_version)
