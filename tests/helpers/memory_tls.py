"""A TLS client and server in one thread, joined by memory BIOs (ssl.MemoryBIO):
real handshakes with no socket, no thread, and a handshake that can be paused
between two flights."""

from __future__ import annotations

import contextlib
import ssl


def _step(obj: ssl.SSLObject) -> bool:
    try:
        obj.do_handshake()
        return True
    except ssl.SSLWantReadError:
        return False


class MemoryHandshake:
    """One client connection to ``server_ctx``, advanced flight by flight."""

    def __init__(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                 session: ssl.SSLSession | None = None,
                 server_hostname: str = "localhost") -> None:
        self._s_in, self._s_out, self._c_in, self._c_out = (ssl.MemoryBIO() for _ in range(4))
        self.server = server_ctx.wrap_bio(self._s_in, self._s_out, server_side=True)
        self.client = client_ctx.wrap_bio(self._c_in, self._c_out,
                                          server_hostname=server_hostname, session=session)
        self._done = (False, False)

    def step(self) -> bool:
        """The client's next flight to the server, the server's answer back; True when
        both sides finished the handshake."""
        c_done = self._done[0] or _step(self.client)
        self._s_in.write(self._c_out.read())
        s_done = self._done[1] or _step(self.server)
        self._c_in.write(self._s_out.read())
        self._done = (c_done, s_done)
        return c_done and s_done

    def finish(self) -> MemoryHandshake:
        """Complete the handshake, then let the client read what the server sends
        after it (TLS 1.3 NewSessionTicket messages)."""
        for _ in range(8):
            if self.step():
                break
        else:
            raise AssertionError("the handshake did not finish in 8 flights")
        self.server.write(b"x")
        self._c_in.write(self._s_out.read())
        with contextlib.suppress(ssl.SSLWantReadError):
            assert self.client.read(1) == b"x"
        return self

    @property
    def session(self) -> ssl.SSLSession | None:
        return self.client.session

    @property
    def reused(self) -> bool:
        return bool(self.client.session_reused)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              session: ssl.SSLSession | None = None) -> MemoryHandshake:
    """One complete handshake (a resumption attempt when ``session`` is given)."""
    return MemoryHandshake(server_ctx, client_ctx, session).finish()
