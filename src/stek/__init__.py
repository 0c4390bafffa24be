"""stek: TLS session ticket encryption keys, rotated, shared and exported.

The public surface::

    import ssl, stek
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain("cert.pem", "key.pem")
    handle = stek.install(ctx, "file:/run/stek/keyring.json", rotate=True)
    ...
    handle.counters.resumed
"""

from __future__ import annotations

from .errors import (
    BindingError,
    ConfigError,
    InvalidTicket,
    KeyringError,
    NotInitialized,
    SealingError,
    StekError,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
)
from .installation import Counters, Installation, install
from .keyring import Keyring
from .keys import TicketKey
from .rotation import Rotation, init_ring, rotate
from .schedule import Answer, Policy, State, StekWarning
from .stores import KeyStore, open_store

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "BindingError",
    "ConfigError",
    "Counters",
    "Installation",
    "InvalidTicket",
    "KeyStore",
    "Keyring",
    "KeyringError",
    "NotInitialized",
    "Policy",
    "Rotation",
    "SealingError",
    "State",
    "StekError",
    "StekWarning",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "TicketKey",
    "__version__",
    "init_ring",
    "install",
    "open_store",
    "rotate",
]
