"""HAProxy: a ``tls-ticket-keys`` file, and rotation through the runtime API.

Checked against HAProxy 2.6 (``src/cfgparse-ssl.c``
``bind_parse_tls_ticket_keys``, ``src/ssl_sock.c`` ``ssl_tlsext_ticket_key_cb``
and ``ssl_sock_update_tlskey_ref``, ``include/haproxy/ssl_sock-t.h``), and
against the haproxy 2.6 binary in the tests:

* each line is one base64 key, 48 or 80 bytes, all lines the same size,
  laid out as ``struct tls_sess_key_128/256``: ``name[16]``, ``aes_key``,
  ``hmac_key`` (AES *before* HMAC, unlike nginx's 80-byte files);
* HAProxy keeps ``TLS_TICKETS_NO`` keys (3 unless rebuilt otherwise): line
  ``i`` goes to slot ``i % 3``, so only the *last three* lines count, a file
  with fewer than 3 lines is refused, and the encrypting key is the
  *penultimate* line; the last line decrypts only (it is the pre-published
  key), and so does the antepenultimate one (the previous key);
* the callback answers 2 (renew) for the two non-encrypting slots.

stek therefore writes exactly three lines: ``[previous, encrypting, next]``,
where *previous* is the newest decrypt-only key and *next* the pending key;
a slot with no such key repeats the encrypting key.  A consequence to
document: on HAProxy a ticket stays valid only while its key is one of
those three, so about one to two ``rotate_every`` periods, however long the
ring's ``accept_for`` is.

Runtime API (``set ssl tls-key <id|file> <base64>``, HAProxy 2.6
management guide): the key is written over the oldest slot and the
encrypting index moves forward by one, i.e. it *appends* a line: the old
last key now encrypts, the new key is the last one.  ``show tls-keys``
lists references (``<id> (<file>)``) and, given one, its keys in that same
logical order (``<id>.0`` previous, ``<id>.1`` encrypting, ``<id>.2``
last).  :class:`Runtime` appends the fewest keys that turn the running
triple into the file's, then checks the result with ``show tls-keys``.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from pathlib import Path

from ..keyring import Keyring
from ..keys import TicketKey
from . import ExportError, Rendered, serving_order

#: HAProxy's TLS_TICKETS_NO default (include/haproxy/defaults.h).
TICKETS_NO = 3


def key_bytes(key: TicketKey) -> bytes:
    """``struct tls_sess_key_128/256``: name, AES key, HMAC key."""
    return key.name + key.aes_key + key.hmac_key


def key_line(key: TicketKey) -> str:
    return base64.b64encode(key_bytes(key)).decode("ascii")


def triple(ring: Keyring, now: float) -> tuple[TicketKey, TicketKey, TicketKey]:
    """The three keys HAProxy holds, in file order: previous, encrypting, next."""
    order = serving_order(ring, now)
    enc = order.encrypting
    previous = order.decrypting[0] if order.decrypting else enc
    nxt = order.pending[0] if order.pending else enc
    return previous, enc, nxt


def render(ring: Keyring, now: float, out: Path) -> Rendered:
    keys = triple(ring, now)
    text = "".join(key_line(k) + "\n" for k in keys)
    return Rendered("haproxy", (("", text.encode("ascii")),), encrypting=keys[1].name)


# -- runtime API ----------------------------------------------------------------

_REF = re.compile(r"^(\d+) \((.*)\)$")
_KEY = re.compile(r"^(\d+)\.(\d+) (\S+)$")


class Runtime:
    """A client of HAProxy's runtime API on a stats socket (``level admin``).

    Responses of ``show tls-keys <ref>`` contain key material: they are parsed
    and compared, never logged or put into exceptions.
    """

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 5.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Runtime({self.socket_path!r})"

    def command(self, line: str) -> str:
        """Send one command (non-interactive mode: HAProxy answers, then closes)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.socket_path)
                sock.sendall(line.encode("ascii") + b"\n")
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise ExportError(f"HAProxy runtime API {self.socket_path}: "
                              f"{exc.strerror or exc}") from exc
        return b"".join(chunks).decode("ascii", errors="replace")

    def refs(self) -> dict[str, int]:
        """``show tls-keys``: loaded key files -> reference id."""
        found: dict[str, int] = {}
        for line in self.command("show tls-keys").splitlines():
            m = _REF.match(line.strip())
            if m:
                found[m.group(2)] = int(m.group(1))
        return found

    def ref_for(self, path: str | os.PathLike[str]) -> int:
        """The id of the reference HAProxy loaded from ``path`` (compared after realpath)."""
        want = os.path.realpath(path)
        refs = self.refs()
        for file, ref_id in refs.items():
            if os.path.realpath(file) == want:
                return ref_id
        raise ExportError(
            f"HAProxy at {self.socket_path} has no tls-ticket-keys reference for {want} "
            f"(it lists {sorted(refs) or 'none'}): the bind line must name this file"
        )

    def keys(self, ref_id: int) -> list[str]:
        """``show tls-keys #<id>``: the base64 keys, in logical order (previous, enc, next)."""
        entries: list[tuple[int, str]] = []
        for line in self.command(f"show tls-keys #{ref_id}").splitlines():
            m = _KEY.match(line.strip())
            if m and int(m.group(1)) == ref_id:
                entries.append((int(m.group(2)), m.group(3)))
        if not entries:
            raise ExportError(f"HAProxy at {self.socket_path}: 'show tls-keys #{ref_id}' "
                              f"listed no keys")
        return [line for _, line in sorted(entries)]

    def push(self, ref_id: int, line: str) -> None:
        """``set ssl tls-key #<id> <base64>``: append one key."""
        answer = self.command(f"set ssl tls-key #{ref_id} {line}")
        if "updated" not in answer.lower():
            # HAProxy's error messages never echo the key.
            raise ExportError(f"HAProxy at {self.socket_path} refused the key for reference "
                              f"#{ref_id}: {answer.strip()[:200]}")

    def sync(self, path: str | os.PathLike[str], lines: list[str]) -> int:
        """Make the running keys equal ``lines`` (the file's last three); return keys pushed.

        Appending ``lines[3-k:]`` works when the running triple's last ``k``
        keys already equal ``lines[:k]``; the largest such ``k`` is used.
        """
        want = lines[-TICKETS_NO:]
        if len(want) != TICKETS_NO:
            raise ExportError(f"HAProxy needs {TICKETS_NO} keys, got {len(want)}")
        ref_id = self.ref_for(path)
        current = self.keys(ref_id)
        if current == want:
            return 0
        keep = 0
        for k in range(TICKETS_NO - 1, 0, -1):
            if current[TICKETS_NO - k:] == want[:k]:
                keep = k
                break
        for line in want[keep:]:
            self.push(ref_id, line)
        if self.keys(ref_id) != want:
            raise ExportError(f"HAProxy at {self.socket_path}: after 'set ssl tls-key', "
                              f"'show tls-keys #{ref_id}' does not list the expected keys")
        return TICKETS_NO - keep


def lines_of(rendered: Rendered) -> list[str]:
    return rendered.content.decode("ascii").split()
