"""Real nginx and HAProxy for the exporter and agent tests, plus an HTTPS probe.

Each server runs as the current user on 127.0.0.1 in its own temp dir and
process group, and is stopped (group-wide, by its own pid) at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers.certs import Certs
from helpers.ports import free_port
from helpers.programs import find_program
from stek.hazmat.libssl import libssl
from stek.rotation import init_ring
from stek.schedule import Policy
from stek.stores.file import FileStore


@dataclass
class Hit:
    """What one HTTPS request saw."""

    reused: bool
    session: ssl.SSLSession
    ticket: bytes  # the ticket the client now holds (b"" if none)
    offered: bytes  # the ticket it presented (b"" for a fresh connection)
    body: bytes

    @property
    def name(self) -> bytes:
        """The key name of the ticket now held (RFC 5077 section 4: its first 16 bytes)."""
        return self.ticket[:16]

    @property
    def offered_name(self) -> bytes:
        return self.offered[:16]


def ticket_of(session: ssl.SSLSession | None) -> bytes:
    return libssl().session_ticket(session) if session is not None else b""


def get(port: int, cctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> Hit:
    """One HTTP/1.0 request over TLS, read to EOF (so TLS 1.3 tickets are processed)."""
    offered = ticket_of(session)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            while chunk := tls.recv(65536):
                data += chunk
        if not data.startswith(b"HTTP/1."):
            raise AssertionError(f"unexpected answer {data[:100]!r}")
        sess = tls.session
        assert sess is not None
        return Hit(tls.session_reused, sess, ticket_of(sess), offered, data)


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{_read(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"server never listened on {port}:\n{_read(log)}")
        time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


class Server:
    """A server process in its own process group; ``stop()`` ends that group only."""

    def __init__(self, cmd: list[str], log: Path, port: int) -> None:
        self.log = log
        self.port = port
        self.sock: Path | None = None  # HAProxy's admin socket
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(port, self.proc, log)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return _read(self.log)

    def children(self) -> set[int]:
        """The server's child processes right now (nginx's and Apache's workers):
        /proc/PID/task/PID/children, proc(5)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return set()
        return {int(c) for c in text.split()}

    def reloaded(self, before: set[int], workers: int = 1) -> bool:
        """Whether a reload is over: every child from ``before`` has exited and
        ``workers`` new ones run.  A reloaded nginx lets its old workers finish
        gracefully, and until one has closed its listening socket it may still
        accept a connection with the old keys."""
        now = self.children()
        return len(now) == workers and not now & before

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._out.close()


NGINX_CONF = """\
worker_processes 1;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{servers}}}
"""

NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        # No session cache: a resumption here can only come from a ticket.
        ssl_session_cache none;
        # ssl_session_timeout comes from stek's tickets.conf (the ring's accept_for).
{directives}        include {include};
        location / {{ return 200 "{label}\\n"; }}
    }}
"""


def nginx_server(port: int, cert: Path, key: Path, include: Path, label: str,
                 directives: Sequence[str] = ()) -> str:
    """One nginx server block: TLS on 127.0.0.1:``port`` with tickets and no session
    cache, ``include`` (stek's tickets.conf) and ``directives`` in it, answering
    every request with ``label``."""
    extra = "".join(f"        {directive};\n" for directive in directives)
    return NGINX_SERVER.format(port=port, cert=cert, key=key, include=include, label=label,
                               directives=extra)


@contextlib.contextmanager
def nginx_servers(prefix: Path, servers: str, port: int) -> Iterator[Server]:
    """nginx 1.22 with these server blocks (:func:`nginx_server`), its files in ``prefix``.

    The configuration must pass ``nginx -t``; the server is up once it listens
    on ``port`` (one of the blocks' ports).  ``server.log`` is nginx's error log.
    """
    exe = find_program("nginx")
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=prefix / "tmp", servers=servers))
    log = prefix / "error.log"
    globals_ = f"daemon off; pid {prefix / 'nginx.pid'}; error_log {log} notice;"
    cmd = [exe, "-p", str(prefix), "-c", str(conf), "-e", str(log), "-g", globals_]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr + _read(log)
    server = Server(cmd, prefix / "stdout.log", port)
    server.log = log
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def nginx(workdir: Path, certs: Certs, include: Path, label: str = "nginx", *,
          client_ca: Path | None = None) -> Iterator[Server]:
    """nginx 1.22 with ``include`` (stek's tickets.conf) in its one server block.

    With ``client_ca``: ``ssl_client_certificate client_ca`` and
    ``ssl_verify_client optional`` (nginx then asks for, but does not require,
    a client certificate, and hashes the CA names into its session id context).
    """
    port = free_port()
    verify = () if client_ca is None else (f"ssl_client_certificate {client_ca}",
                                           "ssl_verify_client optional")
    block = nginx_server(port, certs.cert, certs.key, include, label, verify)
    with nginx_servers(workdir / f"nginx-{label}", block, port) as server:
        yield server


HAPROXY_CONF = """\
global
    stats socket {sock} mode 600 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{port} ssl crt {pem} tls-ticket-keys {keys}
    http-request return status 200 content-type text/plain string "{label}"
"""


def short_tmpdir() -> Path:
    """A fresh directory with a short path (unix socket paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="stek-"))


@contextlib.contextmanager
def haproxy(workdir: Path, certs: Certs, keys: Path, label: str = "haproxy") -> Iterator[Server]:
    """HAProxy 2.6 with ``tls-ticket-keys keys`` and an admin socket (``server.sock``)."""
    exe = find_program("haproxy")
    d = workdir / f"haproxy-{label}"
    d.mkdir(parents=True, exist_ok=True)
    pem = d / "server.pem"
    pem.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    pem.chmod(0o600)
    sock_dir = short_tmpdir()
    sock = sock_dir / f"{label}.sock"
    port = free_port()
    cfg = d / "haproxy.cfg"
    cfg.write_text(HAPROXY_CONF.format(sock=sock, port=port, pem=pem, keys=keys, label=label))
    check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    server = Server([exe, "-f", str(cfg), "-db"], d / "haproxy.log", port)
    server.sock = sock
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


APACHE_CONF = """\
ServerRoot {root}
DefaultRuntimeDir {root}
PidFile {root}/httpd.pid
ErrorLog {root}/error.log
LogLevel info
LoadModule mpm_prefork_module {modules}/mod_mpm_prefork.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule socache_shmcb_module {modules}/mod_socache_shmcb.so
LoadModule ssl_module {modules}/mod_ssl.so
{user}
StartServers 1
MinSpareServers 1
MaxSpareServers 2
MaxRequestWorkers 4
# No port here: mod_ssl's session id context is the MD5 of "ServerName:port"
# (ssl_util_vhostid), so every instance of one site shares it (port 443 when
# ServerName has none), as instances behind one load balancer would.
ServerName localhost
Listen 127.0.0.1:{port}
DocumentRoot {root}/htdocs
# No content module and no access: every answer is a 403 whose body names the instance.
<Directory />
    AllowOverride None
    Require all denied
</Directory>
ErrorDocument 403 "{label}"
SSLEngine on
SSLCertificateFile {cert}
SSLCertificateKeyFile {key}
SSLProtocol -all +TLSv1.2 +TLSv1.3
# No session cache: a resumption here can only come from a ticket.
SSLSessionCache none
SSLSessionTickets on
SSLSessionTicketKeyFile {keyfile}
"""

APACHE_MODULES = Path("/usr/lib/apache2/modules")


def _apache_user() -> str:
    """As root, Apache's children must switch to an unprivileged user (mod_unixd
    refuses to serve as root); as anyone else they stay that user."""
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    return f"User {nobody.pw_name}\nGroup {grp.getgrgid(nobody.pw_gid).gr_name}"


@contextlib.contextmanager
def apache(workdir: Path, certs: Certs, keyfile: Path, label: str = "apache") -> Iterator[Server]:
    """Debian's Apache httpd 2.4 (prefork, mod_ssl) with ``SSLSessionTicketKeyFile keyfile``.

    Runs in the foreground (``-DFOREGROUND``) in its own process group; as root
    the parent keeps root (it reads the key file at start) and its children
    serve as ``nobody``.
    """
    exe = find_program("apache2")
    root = workdir / f"apache-{label}"
    (root / "htdocs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = root / "httpd.conf"
    conf.write_text(APACHE_CONF.format(root=root, modules=APACHE_MODULES, user=_apache_user(),
                                       port=port, label=label, cert=certs.cert, key=certs.key,
                                       keyfile=keyfile))
    cmd = [exe, "-d", str(root), "-f", str(conf)]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    server = Server([*cmd, "-DFOREGROUND"], root / "stdout.log", port)
    server.log = root / "error.log"
    try:
        yield server
    finally:
        server.stop()


def live_store(tmp_path: Path) -> tuple[FileStore, float]:
    """A ring made for the real clock (``stek inspect`` reads it), whose encrypting key
    stays active for at least five more minutes."""
    now = time.time()
    for every in (3600, 3900, 4200):
        store = FileStore(tmp_path / f"ring-{every}.json")
        init_ring(store, Policy(rotate_every=every, accept_for=3600, publish_ahead=60), now=now)
        key = store.read().encrypting_key(now)
        if key is not None and key.retires_at - now >= 300:
            return store, now
    raise AssertionError("no policy gives an encrypting key for the next five minutes")


def inspect_cli(pem: Path, store: FileStore) -> tuple[int, dict]:
    """The real ``stek inspect --json`` on an s_client session file."""
    proc = subprocess.run([sys.executable, "-m", "stek.cli", "inspect", str(pem),
                           "--store", f"file:{store.path}", "--json"],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout)


SLOT = 600
#: A fixed instant one second into a rotation slot (the ring's clock, not the server's).
T0 = (1_900_000_000 // SLOT) * SLOT + 1


def make_store(tmp_path: Path, size: int = 80) -> FileStore:
    """A ring of ``size``-byte keys made for ``T0``, in a file store under ``tmp_path``."""
    store = FileStore(tmp_path / "ring.json")
    init_ring(store, Policy(rotate_every=SLOT, accept_for=5 * SLOT, publish_ahead=60,
                            key_size=size), now=T0)
    return store
