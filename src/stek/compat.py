"""Session id contexts of the servers a Python server can share a ring with.

OpenSSL resumes a session only in the session id context it was made in
(SSL_CTX_set_session_id_context(3)), under TLS 1.2 and 1.3.  Each server
picks its own, so servers on one ring resume none of each other's tickets
until a Python server takes theirs::

    stek.install(ctx, store, session_id_context=stek.compat.HAPROXY_SESSION_ID_CONTEXT)

What the context protects, and when sharing one is safe: docs/integrations.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import ConfigError

#: CPython's ``_ssl`` (Modules/_ssl.c): ``"Python"`` with its NUL, 7 bytes.
PYTHON_SESSION_ID_CONTEXT = b"Python\x00"

#: HAProxy (src/ssl_sock.c): ``SSL_CTX_set_session_id_context(ctx,
#: (const unsigned char *)SHCTX_APPNAME, strlen(SHCTX_APPNAME))`` with
#: SHCTX_APPNAME ``"haproxy"`` (include/haproxy/shctx-t.h): 7 bytes, lower
#: case, no NUL.  HAProxy 2.6 seals exactly this in its tickets.
HAPROXY_SESSION_ID_CONTEXT = b"haproxy"

#: nginx's http module passes this string to ngx_ssl_session_cache()
#: (src/http/modules/ngx_http_ssl_module.c, ngx_http_ssl_sess_id_ctx).
_NGINX_HTTP = b"HTTP"


def _certificates(path: str | Path, what: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"{path} holds no PEM certificate ({what})") from exc
    return certs


def nginx_session_id_context(cert_chain_path: str | Path,
                             client_ca_path: str | Path | None = None) -> bytes:
    """The session id context nginx's http module sets for one server block.

    ``ngx_ssl_session_id_context`` (src/event/ngx_event_openssl.c) is SHA-1
    over: the string ``HTTP``; the SHA-1 of each ``ssl_certificate``'s DER
    (the leaf: the chain's other certificates are not in that list); then the
    SHA-1 of the DER of each name in the client CA list, which
    ``ssl_client_certificate`` loads with SSL_load_client_CA_file(3) (each
    certificate's subject, in file order, duplicates dropped).  Pass
    ``client_ca_path`` only when nginx verifies clients (``ssl_verify_client``
    on or optional): otherwise nginx loads no client CA list.

    One ``ssl_certificate`` per server block is assumed; a block with several
    (RSA and ECDSA) hashes each leaf in configuration order.
    """
    leaf = _certificates(cert_chain_path, "certificate chain")[0]
    md = hashlib.sha1(_NGINX_HTTP)  # noqa: S324 - nginx's choice, not a security use
    md.update(hashlib.sha1(leaf.public_bytes(serialization.Encoding.DER)).digest())  # noqa: S324
    if client_ca_path is not None:
        seen: set[bytes] = set()
        for ca in _certificates(client_ca_path, "client CA file"):
            name = ca.subject.public_bytes()
            if name in seen:
                continue
            seen.add(name)
            md.update(hashlib.sha1(name).digest())  # noqa: S324 - X509_NAME_digest(name, sha1)
    return md.digest()


__all__ = [
    "HAPROXY_SESSION_ID_CONTEXT",
    "PYTHON_SESSION_ID_CONTEXT",
    "nginx_session_id_context",
]
