"""Run by scripts/check-wheel.sh inside a virtualenv where stek was installed
from its wheel: the compiled callback is there and serves a real install.

Two in-memory TLS 1.2 handshakes (ssl.MemoryBIO) on a context with stek
installed: the second resumes the first's ticket, counted by the compiled
callback.  Exits non-zero with one line on any failure.
"""

from __future__ import annotations

import datetime
import ssl
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import stek
from stek.stores.memory import MemoryStore


def pem_pair(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .sign(key, hashes.SHA256()))
    path = directory / "server.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
                     + cert.public_bytes(serialization.Encoding.PEM))
    return path


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              session: ssl.SSLSession | None) -> ssl.SSLObject:
    sin, sout, cin, cout = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(sin, sout, server_side=True)
    client = client_ctx.wrap_bio(cin, cout, session=session)
    done = [False, False]
    for _ in range(20):
        for i, (obj, out, peer) in enumerate(((client, cout, sin), (server, sout, cin))):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            data = out.read()
            if data:
                peer.write(data)
        if all(done):
            return client
    raise SystemExit("wheel smoke: the handshake did not finish")


def main() -> None:
    import stek.hazmat._fastcb as fastcb  # type: ignore[import-not-found]

    if "site-packages" not in str(stek.__file__) or not fastcb.__file__.endswith(".abi3.so"):
        raise SystemExit(f"wheel smoke: not the installed wheel ({stek.__file__}, "
                         f"{fastcb.__file__})")
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(pem_pair(Path(tmp)))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    store = MemoryStore()
    stek.init_ring(store, stek.Policy())
    handle = stek.install(server_ctx, store)
    assert handle.accelerated is True, "the compiled callback does not serve this install"
    first = handshake(server_ctx, client_ctx, None)
    again = handshake(server_ctx, client_ctx, first.session)
    if not again.session_reused or handle.counters.resumed != 1:
        raise SystemExit(f"wheel smoke: no resumption ({handle.counters})")
    print(f"wheel smoke: {sys.version.split()[0]}: accelerated, "
          f"{handle.counters.issued} tickets issued, {handle.counters.resumed} resumed")


if __name__ == "__main__":
    main()
