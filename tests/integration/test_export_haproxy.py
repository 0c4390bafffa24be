"""HAProxy fed by ``stek export --format haproxy`` and by the agent's runtime API target.

Against the real haproxy 2.6 binary:
* the ``tls-ticket-keys`` layout (name|AES|HMAC, base64, 3 lines, encrypting
  key penultimate) is byte-exact in both sizes: HAProxy's tickets open with
  the ring and resume on stek's callback, and stek's tickets resume on HAProxy;
* two HAProxy instances fed by one export resume each other's tickets under
  TLS 1.2 and TLS 1.3 (this HAProxy issues TLS 1.3 tickets under the file's keys);
* a rotation pushed through the runtime API, with no reload: the new key
  encrypts, tickets under the previous key still resume (re-issued under the
  new key), and a pre-published key's ticket resumes before the switch.
"""

from __future__ import annotations

import os
import ssl
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
from helpers.tls_peers import TLSServer, connect, s_client
from helpers.web_servers import T0, get, haproxy, live_store, make_store, ticket_of
from stek.agent import Agent, Target, TargetSpec
from stek.compat import HAPROXY_SESSION_ID_CONTEXT
from stek.export import export
from stek.export.haproxy import Runtime
from stek.session import decode
from stek.ticket import open_ticket

pytestmark = pytest.mark.servers




@TLS_VERSIONS
def test_two_haproxy_instances_resume_each_others_tickets(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    ring = make_store(tmp_path).read()
    keys = tmp_path / "haproxy.keys"
    export("haproxy", ring, T0, keys)
    cctx = client_context(certs, tls_version)
    with haproxy(tmp_path, certs, keys, "a") as a, haproxy(tmp_path, certs, keys, "b") as b:
        assert_instances_resume_each_other(a.port, b.port, cctx, ring, T0)


@pytest.mark.parametrize("size", [80, 48])
@TLS_VERSIONS
def test_haproxy_and_stek_callback_resume_each_others_tickets(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion, size: int) -> None:
    store = make_store(tmp_path, size)
    ring = store.read()
    keys = tmp_path / "haproxy.keys"
    export("haproxy", ring, T0, keys)
    cctx = client_context(certs, tls_version)
    sctx = server_context(certs)
    # OpenSSL resumes only within one session id context: take HAProxy's.
    handle = stek.install(sctx, store, clock=lambda: T0,
                          session_id_context=HAPROXY_SESSION_ID_CONTEXT)
    with haproxy(tmp_path, certs, keys) as hap, TLSServer(sctx) as py:
        assert_resumes_both_ways(hap.port, py, handle, cctx, ring, T0, size,
                                 HAPROXY_SESSION_ID_CONTEXT)
    handle.uninstall()


@TLS_VERSIONS
def test_runtime_api_rotation_without_reload(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    store = make_store(tmp_path)
    clock = [float(T0)]
    keys = tmp_path / "haproxy.keys"
    export("haproxy", store.read(), T0, keys)
    cctx = client_context(certs, tls_version)
    with haproxy(tmp_path, certs, keys) as hap:
        assert hap.sock is not None
        target = Target(TargetSpec("haproxy", keys, haproxy_sockets=(hap.sock,)))
        agent = Agent(store, clock=lambda: clock[0], targets=[target])
        agent.step()
        assert target.applies == 0 and target.last_error is None  # already current
        old = store.read().encrypting_key(T0)
        assert old is not None
        kept = get(hap.port, cctx)
        assert kept.name == old.name
        assert decode(open_ticket(kept.ticket, store.read()).state).sid_ctx == \
            HAPROXY_SESSION_ID_CONTEXT

        clock[0] = old.retires_at - 30  # publish_ahead: the next key is pushed as "last"
        agent.step()
        ring = store.read()
        new = next(k for k in ring.keys if k.activates_at == old.retires_at)
        assert target.applies == 1 and target.last_error is None
        assert get(hap.port, cctx).name == old.name  # the old key still encrypts
        # A host that already switched seals under the new key: HAProxy opens it.
        sctx = server_context(certs)
        handle = stek.install(sctx, store, clock=lambda: old.retires_at + 1,
                              session_id_context=HAPROXY_SESSION_ID_CONTEXT)
        with TLSServer(sctx) as py:
            early = connect(py.port, cctx)
        handle.uninstall()
        assert ticket_of(early.session)[:16] == new.name
        assert get(hap.port, cctx, early.session).reused

        clock[0] = old.retires_at + 1  # the switch
        agent.step()
        assert target.applies == 2 and target.apply_failures == 0
        fresh = get(hap.port, cctx)
        assert fresh.name == new.name, "the new key must be in use"
        late = get(hap.port, cctx, kept.session)
        assert late.reused, "a ticket under the previous key must still resume"
        assert late.name == new.name, "and be re-issued under the new key"
        # No reload happened: the same process, and its keys are the file's.
        assert hap.proc.poll() is None
        os.kill(hap.pid, 0)
        rt = Runtime(hap.sock)
        assert rt.keys(rt.ref_for(keys)) == keys.read_text().split()
        assert (keys.stat().st_mode & 0o777) == 0o600


@TLS_VERSIONS
def test_stek_inspect_explains_a_haproxy_ticket(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    """s_client's -sess_out file from real HAProxy: resume under the exported key, then,
    once that key left the ring, a full handshake for an unknown key (inspect's
    clock is the real one, so the ring is made for now)."""
    store, now = live_store(tmp_path)
    ring = store.read()
    enc = encrypting_name(ring, now)
    keys = tmp_path / "haproxy.keys"
    export("haproxy", ring, now, keys)
    sess = tmp_path / "sess.pem"
    with haproxy(tmp_path, certs, keys) as hap:
        full = s_client(hap.port, tls_version, tmp_path, sess_out=sess, ca=certs.ca)
    assert sess.exists(), full
    assert_inspect_explains(sess, store, enc, tls_version)
