"""Support for the ticket / session / inspect / hostile-ticket tests.

A stek-installed Python server on a file store whose ring the test controls
key by key, and helpers that make a real client (openssl s_client) present
any ticket: take a real session file, replace its ticket with
:func:`stek.session.replace`, hand it to ``-sess_in``.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helpers.certs import Certs, server_context
from helpers.tls_peers import TLSServer, s_client, s_client_reused
from stek import session as sessions
from stek.installation import Installation, install
from stek.keyring import Keyring
from stek.keys import TicketKey, generate_key
from stek.schedule import Policy
from stek.stores.file import FileStore

HOUR = 3600


def key_in_state(state: str, now: int, size: int = 80) -> TicketKey:
    """A fresh random key whose window puts it in ``state`` at ``now``."""
    windows = {
        "pending": (now + HOUR, now + 2 * HOUR, now + 3 * HOUR),
        "active": (now - 60, now + HOUR - 60, now + 2 * HOUR),  # within Policy()
        "decrypt-only": (now - 2 * HOUR, now - HOUR, now + HOUR),
        # Still in the ring, but its accept window ended a moment ago.
        "expired": (now - 3 * HOUR, now - 2 * HOUR, now - 5),
    }
    a, r, e = windows[state]
    return generate_key(size=size, activates_at=a, retires_at=r, expires_at=e)


def ring_of(*keys: TicketKey, size: int = 80) -> Keyring:
    return Keyring(Policy(key_size=size), tuple(keys))


def write_ring(store: FileStore, ring: Keyring) -> None:
    store.update(lambda current: Keyring(ring.policy, ring.keys,
                                         (current.generation + 1) if current else 1))


@dataclass
class StekServer:
    """A Python ssl server with stek installed on a file store (ring under test control)."""

    server: TLSServer
    installation: Installation
    store: FileStore
    certs: Certs
    workdir: Path

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def store_url(self) -> str:
        return f"file:{self.store.path}"

    def set_ring(self, ring: Keyring) -> None:
        """Write ``ring`` to the store and make the server answer from it now."""
        write_ring(self.store, ring)
        self.installation.refresh()

    def session_file(self, version: ssl.TLSVersion, name: str = "real") -> Path:
        """A real s_client session (``-sess_out``) from a full handshake with this server."""
        path = self.workdir / f"{name}-{version.name}.pem"
        out = s_client(self.port, version, self.workdir, sess_out=path, ca=self.certs.ca)
        assert "New, " in out, out
        assert path.exists() and sessions.ticket(sessions.from_pem(path.read_text())), out
        return path

    def present(self, version: ssl.TLSVersion, der: bytes, name: str = "crafted") -> str:
        """Resume with the client session ``der`` (its ticket whatever it is); s_client output."""
        path = self.workdir / f"{name}-{version.name}.pem"
        path.write_text(sessions.to_pem(der))
        return s_client(self.port, version, self.workdir, sess_in=path, ca=self.certs.ca)

    def resumes(self, version: ssl.TLSVersion, der: bytes, name: str = "crafted") -> bool:
        return s_client_reused(self.present(version, der, name))


@contextlib.contextmanager
def stek_server(certs: Certs, workdir: Path, ring: Keyring, *,
                session_id_context: bytes | None = None) -> Iterator[StekServer]:
    """A stek Python server on ``ring``, under ``session_id_context`` when given
    (else Python's own)."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = FileStore(str(workdir / "ring.json"))
    write_ring(store, ring)
    ctx = server_context(certs)
    inst = install(ctx, store, session_id_context=session_id_context)
    try:
        with TLSServer(ctx) as srv:
            yield StekServer(srv, inst, store, certs, workdir)
    finally:
        inst.uninstall()


def pem_der(path: Path) -> bytes:
    return sessions.from_pem(path.read_text())


def fresh_session_id() -> bytes:
    """A session ID no server issued: resumption can only come from the ticket."""
    return os.urandom(32)


def now() -> int:
    return int(time.time())
