"""The compiled ticket callback (stek.hazmat._fastcb): loading it, its slots, and fork().

Loaded once per process, on the first ``install()`` that may use it, and
initialized with libssl's function addresses.  Each installation it serves
holds one of its slots (:class:`Slot`).  In a forked child its mutexes are
re-created before anything uses them (:func:`_after_fork_in_child`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .hazmat.libssl import LibSSL, libssl

log = logging.getLogger("stek.installation")

_ACCEL: Any = None
_ACCEL_TRIED = False


def accelerator(lib: LibSSL) -> Any:
    """The C callback module, initialized with libssl's function addresses, or None."""
    global _ACCEL, _ACCEL_TRIED
    if not _ACCEL_TRIED:
        _ACCEL_TRIED = True
        try:
            from .hazmat import _fastcb  # type: ignore[attr-defined]
        except ImportError:
            return None
        if getattr(_fastcb, "API", 1) != 2:
            # A build of an older _fastcb.c left in a source tree (a
            # version-specific .so is found before the abi3 one).
            log.warning("stek.hazmat._fastcb at %s is a stale build: using the Python "
                        "callback (rebuild: python setup.py build_ext --inplace)",
                        _fastcb.__file__)
            return None
        mac = lib.address("EVP_MAC_CTX_set_params") if lib.openssl3 else 0
        hmac = 0 if lib.openssl3 else lib.address("HMAC_Init_ex")
        _fastcb.init(lib.address("RAND_bytes"), lib.address("EVP_EncryptInit_ex"),
                     lib.address("EVP_DecryptInit_ex"), mac, hmac, int(lib.sha256 or 0),
                     lib.address("SSL_version"), lib.address("SSL_get_session"),
                     lib.address("SSL_SESSION_get0_ticket_appdata"),
                     lib.address("SSL_SESSION_set1_ticket_appdata"),
                     lib.address("SSL_SESSION_get_time"), lib.address("CRYPTO_get_ex_new_index"),
                     lib.address("SSL_CTX_set_ex_data"), lib.address("SSL_CTX_get_ex_data"),
                     lib.address("SSL_set_session_id_context"),
                     lib.address("SSL_SESSION_get0_id_context"),
                     lib.address("SSL_get_verify_mode"), lib.address("SSL_SESSION_get0_peer"),
                     lib.address("SSL_client_hello_get0_ext"),
                     lib.address("SSL_SESSION_get0_hostname"),
                     lib.address("SSL_get_servername"), lib.address("SSL_SESSION_set1_hostname"))
        _ACCEL = _fastcb
    return _ACCEL


def accelerated_available() -> bool:
    """True when the compiled callback is built and usable in this process."""
    return accelerator(libssl()) is not None


class Slot:
    """A slot of the compiled callback, released exactly once (by uninstall() or by GC)."""

    def __init__(self, accel: Any, index: int) -> None:
        self.accel = accel
        self.index: int | None = index
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self.index is not None:
                self.accel.release(self.index)
                self.index = None


def _after_fork_in_child() -> None:
    """Re-create the compiled callback's mutexes: one another thread held at fork
    time would stay locked for ever in the child (docs/design.md, fork()).

    Registered when this module is first imported, so before stek.installation's
    own hook (it imports this module): ``after_in_child`` hooks run in
    registration order (os.register_at_fork), so the installations rejoining
    their refresh groups there, which load keys into their slots, find them unlocked.
    """
    if _ACCEL is not None:
        _ACCEL.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
