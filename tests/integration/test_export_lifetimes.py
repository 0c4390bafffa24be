"""The ticket lifetime hint real servers give, fed by stek's exports: nginx's comes from
tickets.conf (the ring's accept_for, as Python servers get); HAProxy's and Apache's from the
setting docs/exporters.md names."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.certs import TLS_VERSIONS, Certs, client_context
from helpers.ports import free_port
from helpers.programs import find_program
from helpers.tls_peers import s_client
from helpers.web_servers import (
    APACHE_CONF,
    APACHE_MODULES,
    HAPROXY_CONF,
    T0,
    Server,
    _apache_user,
    get,
    inspect_cli,
    live_store,
    nginx,
    short_tmpdir,
)
from stek.export import export
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores import FileStore

pytestmark = pytest.mark.servers


def ring_store(tmp_path: Path, size: int = 80) -> FileStore:
    """A ring whose accept_for (2h) is neither nginx's default (300 s) nor OpenSSL's (7200 s
    is 2h: so 3h here) nor rotate_every."""
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy(rotate_every=3600, accept_for=3 * 3600, publish_ahead=60,
                            key_size=size), now=T0)
    return store


@TLS_VERSIONS
def test_nginx_ticket_lifetime_hint_is_the_rings_accept_for(
        tmp_path: Path, certs: Certs, tls_version: ssl.TLSVersion) -> None:
    store = ring_store(tmp_path)
    out = tmp_path / "nginx-keys"
    export("nginx", store.read(), T0, out)
    assert "ssl_session_timeout 10800s;" in (out / "tickets.conf").read_text()
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx:
        hit = get(ngx.port, client_context(certs, tls_version))
    assert hit.ticket, "nginx issued no ticket"
    assert hit.session.ticket_lifetime_hint == 3 * 3600


def test_nginx_hint_read_by_s_client_and_stek_inspect(tmp_path: Path, certs: Certs) -> None:
    """The operator's way: s_client -sess_out, then stek inspect on that session file."""
    store, now = live_store(tmp_path)
    out = tmp_path / "nginx-keys"
    export("nginx", store.read(), now, out)
    sess = tmp_path / "session.pem"
    with nginx(tmp_path, certs, out / "tickets.conf") as ngx:
        s_client(ngx.port, ssl.TLSVersion.TLSv1_2, tmp_path, sess_out=sess, ca=certs.ca)
    code, doc = inspect_cli(sess, store)
    accept_for = store.read().policy.accept_for
    assert code == 0 and doc["verdict"] == "resume", doc
    # The hint the client was given, and the timeout sealed in the ticket's session.
    assert doc["client_session"]["lifetime_hint"] == accept_for, doc["client_session"]
    assert doc["session"]["timeout"] == accept_for


def test_nginx_refuses_a_second_timeout_in_the_including_block(tmp_path: Path,
                                                               certs: Certs) -> None:
    """What docs/exporters.md warns about: nginx -t fails with 'is duplicate'."""
    store = ring_store(tmp_path)
    out = tmp_path / "nginx-keys"
    export("nginx", store.read(), T0, out)
    both = tmp_path / "both.conf"
    both.write_text("ssl_session_timeout 1h;\n" + f"include {out / 'tickets.conf'};\n")
    with pytest.raises(AssertionError, match="is duplicate"), nginx(tmp_path, certs, both):
        pass


@contextlib.contextmanager
def haproxy_with(workdir: Path, certs: Certs, keys: Path, global_line: str) -> Iterator[Server]:
    exe = find_program("haproxy")
    d = workdir / "haproxy"
    d.mkdir(parents=True, exist_ok=True)
    pem = d / "server.pem"
    pem.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    pem.chmod(0o600)
    sock_dir = short_tmpdir()
    port = free_port()
    conf = HAPROXY_CONF.format(sock=sock_dir / "s.sock", port=port, pem=pem, keys=keys,
                               label="h")
    cfg = d / "haproxy.cfg"
    cfg.write_text(conf.replace("global\n", f"global\n    {global_line}\n", 1))
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    server = Server([exe, "-f", str(cfg), "-db"], d / "haproxy.log", port)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


@TLS_VERSIONS
def test_haproxy_tune_ssl_lifetime_sets_the_hint(tmp_path: Path, certs: Certs,
                                                 tls_version: ssl.TLSVersion) -> None:
    """docs/exporters.md: tune.ssl.lifetime = min(rotate_every, accept_for)."""
    store = ring_store(tmp_path)
    policy = store.read().policy
    keys = tmp_path / "haproxy.keys"
    export("haproxy", store.read(), T0, keys)
    want = min(policy.rotate_every, policy.accept_for)
    with haproxy_with(tmp_path, certs, keys, f"tune.ssl.lifetime {want}") as hap:
        hit = get(hap.port, client_context(certs, tls_version))
    assert hit.ticket and hit.session.ticket_lifetime_hint == want


@contextlib.contextmanager
def apache_with(workdir: Path, certs: Certs, keyfile: Path, extra: str) -> Iterator[Server]:
    exe = find_program("apache2")
    root = workdir / "apache"
    (root / "htdocs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = root / "httpd.conf"
    conf.write_text(APACHE_CONF.format(root=root, modules=APACHE_MODULES, user=_apache_user(),
                                       port=port, label="a", cert=certs.cert, key=certs.key,
                                       keyfile=keyfile) + extra + "\n")
    cmd = [exe, "-d", str(root), "-f", str(conf)]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    server = Server([*cmd, "-DFOREGROUND"], root / "stdout.log", port)
    try:
        yield server
    finally:
        server.stop()


@TLS_VERSIONS
def test_apache_session_cache_timeout_sets_the_hint(tmp_path: Path, certs: Certs,
                                                    tls_version: ssl.TLSVersion) -> None:
    """docs/exporters.md: SSLSessionCacheTimeout = rotate_every (Apache holds one key)."""
    store = ring_store(tmp_path, size=48)
    policy = store.read().policy
    keyfile = tmp_path / "apache.key"
    export("apache", store.read(), T0, keyfile)
    with apache_with(tmp_path, certs, keyfile,
                     f"SSLSessionCacheTimeout {policy.rotate_every}") as ap:
        hit = get(ap.port, client_context(certs, tls_version))
    assert hit.ticket and hit.session.ticket_lifetime_hint == policy.rotate_every
