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

import importlib.util as _importlib_util
import sys as _sys
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from . import inspection as inspect  # noqa: F401 (the former name, see below)
    from . import inspection as inspection

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


def _lazy_submodule(name: str, *aliases: str) -> None:
    """``stek.<name>``, also importable as ``stek.<alias>``, executed on first use.

    ``stek.inspection`` was ``stek.inspect``: a module named like one of the
    standard library's (``sys.stdlib_module_names``) is imported in its place
    whenever ``src/stek`` comes first on ``sys.path``, and ``dataclasses``
    imports ``inspect``.  The former name stays importable (README.md documents
    ``stek.inspect.ticket_of``).  Both names are one lazy module
    (``importlib.util.LazyLoader``): ``import stek`` runs neither, so it loads
    no ASN.1 decoder.
    """
    spec = _importlib_util.find_spec(f"{__name__}.{name}")  # finds the file, runs nothing
    if spec is None or spec.loader is None:  # pragma: no cover (shipped with stek)
        raise ImportError(f"{__name__}.{name} is missing from this installation")
    spec.loader = _importlib_util.LazyLoader(spec.loader)
    module = _importlib_util.module_from_spec(spec)
    for attr in (name, *aliases):
        _sys.modules[f"{__name__}.{attr}"] = module
        globals()[attr] = module
    spec.loader.exec_module(module)


_lazy_submodule("inspection", "inspect")
