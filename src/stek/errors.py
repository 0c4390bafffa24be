"""stek's exception family.

Every error stek raises on purpose derives from :class:`StekError`, so callers
(and the CLI's ``main()``) catch exactly one root.  Third-party errors are
translated at each boundary with ``raise ... from exc``.  No message ever
carries key bytes: at most a key's *name* in hex, which is public (it travels
in clear inside every ticket, RFC 5077 section 4).
"""

from __future__ import annotations


class StekError(Exception):
    """Root of every error stek raises on purpose."""


class ConfigError(StekError, ValueError):
    """A user-supplied setting is invalid (duration, policy, URL, option)."""


class KeyringError(StekError, ValueError):
    """A keyring violates an invariant (lengths, duplicates, reused material...)."""


class StoreError(StekError):
    """A key store could not be read or written."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (network, permissions, lock)."""


class StoreCorrupt(StoreError):
    """The store holds something that is not a valid stek keyring.

    stek never overwrites such content: the operator must look at it first.
    """


class NotInitialized(StoreError):
    """The store holds no keyring yet (run ``stek init``)."""


class MirroredRing(ConfigError):
    """A write was asked of a mirror: only the agent that keeps it may write it."""


class SealingError(StoreError):
    """A sealed keyring could not be opened (wrong or missing key-encryption key)."""


class RolledBack(SealingError):
    """The store holds a genuine ring older than one this process already saw."""


class BindingError(StekError):
    """The ticket callback cannot be installed on this ``ssl.SSLContext``."""


class ProbeError(StekError):
    """``stek probe`` could not do what it was asked (exit status 2)."""


class InvalidTicket(StekError):
    """A session ticket could not be opened.

    One exception for every kind of bad ticket, so that callers cannot leak
    which check failed; ``reason`` is a short human explanation for operators.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExportError(StekError):
    """A ring cannot be laid out for a target, or its files cannot be written."""
