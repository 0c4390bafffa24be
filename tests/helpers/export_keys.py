"""Ticket keys with recognisable bytes for the export-format tests."""

from __future__ import annotations

from stek.keys import TicketKey


def key(tag: int, size: int, activates: int, retires: int, expires: int) -> TicketKey:
    """A key whose parts are recognizable: name N.., AES A.., HMAC H.. (tagged)."""
    part = 32 if size == 80 else 16
    return TicketKey(name=bytes([0xB0 + tag]) * 16, aes_key=bytes([0xA0 + tag]) * part,
                     hmac_key=bytes([0xC0 + tag]) * part, activates_at=activates,
                     retires_at=retires, expires_at=expires)


def parts(tag: int, size: int = 80) -> tuple[bytes, bytes, bytes]:
    part = 32 if size == 80 else 16
    return bytes([0xB0 + tag]) * 16, bytes([0xA0 + tag]) * part, bytes([0xC0 + tag]) * part
