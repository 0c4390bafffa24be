"""Throughput of stek's ticket ``open`` vs OpenSSL doing the same work, one core.

    python bench/bench_codec.py [--state-bytes 150] [--seconds 2]

What is measured, per ticket, 80-byte ring (AES-256-CBC + HMAC-SHA256):

* ``stek open_ticket``: the one-shot API: find the key, HMAC-SHA256 verify
  (constant time), AES-256-CBC decrypt, PKCS#7 check.  Given a Keyring (as
  ``stek inspect`` passes), the keys are prepared once per ring snapshot;
  given a plain list of keys, key setup is redone for every ticket.
* ``stek Opener.open``: the same with each key's AES and keyed-HMAC objects
  prepared once (what a batch or a server would hold).
* ``OpenSSL C``: a small C program, compiled here against the libcrypto
  Python's ssl uses, that does what ``tls_decrypt_ticket`` (ssl/t1_lib.c) and
  stek's callback do for each ticket: new EVP_CIPHER_CTX and EVP_MAC_CTX,
  HMAC key set, MAC over name|IV|ciphertext, CRYPTO_memcmp, DecryptInit with
  the IV, DecryptUpdate, DecryptFinal (padding check), free.  It opens the
  very ticket stek sealed and checks the plaintext length, so both sides do
  verified, identical work.  It is the honest "OpenSSL, same work, no TLS"
  baseline: a resumed handshake costs far more than either (ECDHE, records),
  so comparing to handshakes would flatter the codec.

The target in issue 3 is >= 50,000 tickets/s for the codec on one core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stek.keyring import Keyring
from stek.keys import generate_key
from stek.schedule import Policy
from stek.ticket import Opener, open_ticket, seal

C_SOURCE = r"""
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int unhex(const char *s, unsigned char *out) {
    size_t n = strlen(s) / 2;
    for (size_t i = 0; i < n; i++) sscanf(s + 2 * i, "%2hhx", &out[i]);
    return (int)n;
}

int main(int argc, char **argv) {
    /* argv: aes_hex hmac_hex ticket_hex seconds */
    unsigned char aes[32], hk[32], t[70000], tag[64], out[70000];
    unhex(argv[1], aes);
    int hklen = unhex(argv[2], hk);
    int tl = unhex(argv[3], t);
    double seconds = atof(argv[4]);
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    const EVP_CIPHER *cipher = EVP_aes_256_cbc();
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end()};
    long n = 0, ok = 0, plain = -1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (;;) {
        for (int k = 0; k < 1000; k++) {
            EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
            EVP_MAC_CTX *m = EVP_MAC_CTX_new(mac);
            size_t ml = 0;
            int l1 = 0, l2 = 0, body = tl - 32;
            if (EVP_MAC_init(m, hk, hklen, params) == 1
                && EVP_MAC_update(m, t, body) == 1
                && EVP_MAC_final(m, tag, &ml, sizeof(tag)) == 1
                && CRYPTO_memcmp(tag, t + body, 32) == 0
                && EVP_DecryptInit_ex(c, cipher, NULL, aes, t + 16) == 1
                && EVP_DecryptUpdate(c, out, &l1, t + 32, body - 32) == 1
                && EVP_DecryptFinal_ex(c, out + l1, &l2) == 1) {
                ok++;
                plain = l1 + l2;
            }
            EVP_MAC_CTX_free(m);
            EVP_CIPHER_CTX_free(c);
            n++;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double el = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
        if (el >= seconds) {
            printf("%ld %ld %ld %.6f\n", n, ok, plain, el);
            return 0;
        }
    }
}
"""


def rate(fn, seconds: float) -> float:  # type: ignore[no-untyped-def]
    """Best of 3 runs of ``seconds`` each, in calls per second."""
    best = 0.0
    for _ in range(3):
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(1000):
                fn()
            n += 1000
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def openssl_baseline(key, ticket: bytes, state_len: int,  # type: ignore[no-untyped-def]
                     seconds: float) -> float | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("OpenSSL C baseline: skipped (no C compiler)")
        return None
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "b.c", Path(d) / "b"
        src.write_text(C_SOURCE)
        build = subprocess.run([cc, "-O2", "-o", str(exe), str(src), "-lcrypto"],
                               capture_output=True, text=True)
        if build.returncode != 0:
            print(f"OpenSSL C baseline: skipped (build failed: {build.stderr.strip()[:200]})")
            return None
        best = 0.0
        for _ in range(3):
            out = subprocess.run([str(exe), key.aes_key.hex(), key.hmac_key.hex(), ticket.hex(),
                                  str(seconds)], capture_output=True, text=True, check=True)
            n, ok, plain, elapsed = out.stdout.split()
            if int(ok) != int(n) or int(plain) != state_len:
                raise SystemExit(f"C baseline did not open the ticket: {out.stdout}")
            best = max(best, int(n) / float(elapsed))
        return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--state-bytes", type=int, default=150,
                    help="session state size (a TLS 1.3 state without client cert is "
                         "about 150 bytes; with one, 600+)")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    key = generate_key(size=80, activates_at=0, retires_at=1, expires_at=2)
    others = [generate_key(size=80, activates_at=0, retires_at=1, expires_at=2)
              for _ in range(11)]
    ring = [*others, key]  # a 12-key ring: the default policy's steady state
    state = os.urandom(args.state_bytes)
    ticket = seal(key, state)
    opener = Opener(ring)
    keyring = Keyring(Policy(), tuple(ring))
    assert open_ticket(ticket, ring).state == state == opener.open(ticket).state
    assert open_ticket(ticket, keyring).state == state

    print(f"ticket {len(ticket)} bytes (state {len(state)}), 80-byte ring of {len(ring)} keys, "
          f"1 core, Python {sys.version.split()[0]}")
    loose = rate(lambda: open_ticket(ticket, ring), args.seconds)
    one_shot = rate(lambda: open_ticket(ticket, keyring), args.seconds)
    prepared = rate(lambda: opener.open(ticket), args.seconds)
    c = openssl_baseline(key, ticket, len(state), args.seconds)
    print(f"stek open_ticket (Keyring)    {one_shot:>12,.0f} tickets/s")
    print(f"stek open_ticket (key list)   {loose:>12,.0f} tickets/s  (prepares per call)")
    print(f"stek Opener.open (prepared)   {prepared:>12,.0f} tickets/s")
    if c is not None:
        print(f"OpenSSL C, same work          {c:>12,.0f} tickets/s")
        print(f"ratio stek/OpenSSL            one-shot {one_shot / c:.2f}, "
              f"prepared {prepared / c:.2f}")
    target = 50_000
    print(f"target {target:,} tickets/s: one-shot {'met' if one_shot >= target else 'NOT met'}, "
          f"prepared {'met' if prepared >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
