"""Keeping the ctypes callbacks alive as long as OpenSSL's ``SSL_CTX`` that
calls them, not as long as the Python ``SSLContext``: one
:class:`~stek._ctypes_callbacks.CallbackSet` per SSL_CTX, made at its first
installation and reused by every later one on it."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any

from ._ctypes_callbacks import CallbackSet
from .errors import BindingError
from .hazmat.libssl import CRYPTO_EX_INDEX_SSL_CTX, ExFreeCallback, LibSSL

# -- lifetime: OpenSSL's SSL_CTX, not the Python SSLContext ------------------------
# OpenSSL keeps an SSL_CTX alive while an SSL made from it lives, and calls
# that SSL_CTX's ticket callbacks (its session_ctx) for the whole handshake,
# even after an SNI callback switched the connection to another context and
# the first SSLContext was collected.  So the ctypes thunks (and, through the
# callbacks they serve, the Installation) are pinned here per SSL_CTX address
# and dropped only by an SSL_CTX ex_data free callback
# (CRYPTO_get_ex_new_index(3)).  One set per SSL_CTX: a re-install reuses it
# (CallbackSet.serve), as the compiled callback takes back the slot its
# SSL_CTX holds, so the pinned thunks stay bounded by the live SSL_CTXs.
_PINNED: dict[int, CallbackSet] = {}
_PIN_LOCK = threading.Lock()
_PIN_INDEX: list[int] = []


def _pin_index(lib: LibSSL) -> int:
    if _PIN_INDEX:
        return _PIN_INDEX[0]
    pinned = _PINNED

    def free(parent: Any, ptr: Any, ad: Any, idx: int, argl: int, argp: Any) -> None:
        # OpenSSL calls this for every SSL_CTX it frees (ptr None for the ones
        # stek never touched).  Nothing may raise into C.
        if ptr:
            with contextlib.suppress(BaseException):
                pinned.pop(ptr, None)

    thunk = ExFreeCallback(free)
    index = int(lib.CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, None, None, None,
                                            ctypes.cast(thunk, ctypes.c_void_p)))
    if index < 0:
        raise BindingError("CRYPTO_get_ex_new_index failed: cannot follow SSL_CTX lifetimes")
    # OpenSSL keeps calling it until the process ends: it is never freed.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(thunk))
    _PIN_INDEX.append(index)
    return index


def callback_set(lib: LibSSL, ctx_ptr: int) -> CallbackSet:
    """The ctypes callbacks of the SSL_CTX at ``ctx_ptr``, kept alive until OpenSSL
    frees it: made (and pinned) on the first call, before OpenSSL is handed any
    of them; the same set on every later call for that SSL_CTX."""
    with _PIN_LOCK:
        pinned = _PINNED.get(ctx_ptr)
        if pinned is not None:
            return pinned
        index = _pin_index(lib)
        if lib.SSL_CTX_set_ex_data(ctx_ptr, index, ctx_ptr) != 1:
            raise BindingError("SSL_CTX_set_ex_data failed: cannot follow the SSL_CTX's lifetime")
        made = _PINNED[ctx_ptr] = CallbackSet()
        return made
