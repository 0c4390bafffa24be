"""Hazardous materials: raw libssl access through ctypes.

Nothing here is safe to use without reading OpenSSL's man pages first.  The
safe layer is :func:`stek.install`.
"""
