#!/usr/bin/env python3
"""atheris fuzz target for the ticket codec, the SSL_SESSION decoder and INPUT parsing.

Invariant (h11's, applied to tickets): whatever bytes a peer or a user
supplies, stek either decodes them or raises InvalidTicket, never any other
exception; and whatever state is sealed opens back to exactly that state.

The first byte selects what is fuzzed (mod 6), the rest is the input.
Seeds (a real-shaped SSL_SESSION, tickets sealed under the fixed keys) are
in fuzz/seeds/; make_seeds() regenerates them.

Short run (the test suite does this, on a copy of the seeds):
    fuzz/fuzz_ticket.py -runs=20000 CORPUS_DIR fuzz/seeds
Long run:
    mkdir -p /tmp/stek-corpus
    python fuzz/fuzz_ticket.py -max_total_time=3600 -jobs=4 -workers=4 /tmp/stek-corpus fuzz/seeds
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["stek", "asn1crypto"]):
    from stek import session as sessions
    from stek.errors import InvalidTicket
    from stek.inspect_input import recognize
    from stek.inspection import inspect_ticket, read_ticket
    from stek.keyring import Keyring
    from stek.keys import TicketKey
    from stek.schedule import Policy
    from stek.ticket import open_ticket, seal

# Fixed keys: the fuzzer can learn their names (they appear in its own
# sealed tickets) and so reach the MAC and padding checks.
KEY80 = TicketKey(bytes(range(1, 17)), b"\x11" * 32, b"\x22" * 32, 0, 2**40, 2**41)
KEY48 = TicketKey(bytes(range(2, 18)), b"\x33" * 16, b"\x44" * 16, 0, 2**40, 2**41)
RING = Keyring(Policy(), (KEY80,))
NOW = 1_800_000_000


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 6, data[1:]
    try:
        if mode == 0:  # arbitrary ticket bytes against both key sizes
            opened = open_ticket(rest, [KEY80, KEY48])
            sessions.decode(opened.state)
        elif mode == 1:  # arbitrary session state (what a ticket decrypts to)
            sessions.decode(rest)
            sessions.replace(rest, ticket=b"t" * 48)
        elif mode == 2:  # the verdict on arbitrary bytes, and behind a real key name
            inspect_ticket(rest, RING, NOW)
            inspect_ticket(KEY80.name + rest, RING, NOW)
        elif mode == 3:  # stek inspect's INPUT parsing
            read_ticket(rest.decode("utf-8", "replace"))
        elif mode == 5:  # input recognition on raw bytes (binary, PEM, hex, base64...)
            found = recognize(rest)
            if found.kind.is_session:
                sessions.decode(found.payload)
        else:  # round trip: any state seals and opens back to itself
            if len(rest) < 16:
                return
            iv, state = rest[:16], rest[16:16 + 4096]
            for key in (KEY80, KEY48):
                opened = open_ticket(seal(key, state, iv), [key])
                if opened.state != state or opened.iv != iv:
                    raise AssertionError("seal/open round trip changed the state")
    except InvalidTicket:
        pass


def make_seeds(directory: str) -> None:
    """Write seed inputs: one per mode, built from a valid session and valid tickets."""
    import os

    # The pinned TLS 1.3 SSL_SESSION of tests/helpers/ticket_vectors.py (STATE).
    state = (
        bytes.fromhex("3065" "020101" "0202" "0304" "04021302" "0400" "0430") + b"\x5a" * 48
        + bytes.fromhex("a106" "02046553f100" "a204" "02020e10" "a409" "0407" "507974686f6e00"
                        "ae06" "020401020304" "af03" "020100")
    )
    iv = bytes(range(16))
    seeds = {
        "ticket80": b"\x00" + seal(KEY80, state, iv),
        "ticket48": b"\x00" + seal(KEY48, state, iv),
        "session": b"\x01" + state,
        "verdict": b"\x02" + seal(KEY80, state, iv),
        "pem": b"\x03" + sessions.to_pem(sessions.replace(state, ticket=seal(KEY80, state,
                                                                               iv))).encode(),
        "hex": b"\x03" + seal(KEY80, state, iv).hex().encode(),
        "roundtrip": b"\x04" + iv + state,
        "recognize-der": b"\x05" + sessions.replace(state, ticket=seal(KEY80, state, iv)),
        "recognize-key": b"\x05-----BEGIN PRIVATE KEY-----\nMC4CAQA=\n-----END PRIVATE KEY-----\n",
    }
    os.makedirs(directory, exist_ok=True)
    for name, seed in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(seed)


def main() -> None:
    if sys.argv[1:2] == ["--make-seeds"]:
        make_seeds(sys.argv[2])
        return
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
