"""Session id contexts of other TLS servers (OpenSSL resumes only within one)."""

PYTHON_SESSION_ID_CONTEXT = b"Python\x00"
HAPROXY_SESSION_ID_CONTEXT = b"haproxy"
