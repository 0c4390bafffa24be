"""A small, bounded HTTP/1.0 GET server for ``/metrics`` and ``/healthz``.

One asyncio event loop in one thread serves every connection, so an idle or
slow client costs a socket, never a thread.  The application runs in a few
worker threads (``workers``), never in the loop: a slow answer (a scrape)
holds one worker, while the loop goes on reading requests and the other
workers answer them (``/healthz`` is never queued behind ``/metrics``).
The limits:

* at most ``max_connections`` open connections: a new one closes the oldest
  (an idle client cannot lock a scraper out for long);
* a request must arrive complete (line and headers, at most
  ``MAX_HEAD`` bytes) within ``timeout`` seconds of the connection, and the
  answer must be taken within ``timeout`` too;
* one request per connection (``Connection: close``, as HTTP/1.0).

Only ``GET`` and ``HEAD`` are served (RFC 9110 section 9.3.1-9.3.2).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

log = logging.getLogger("stek.agent")

#: Default cap on open connections.
MAX_CONNECTIONS = 32
#: Default seconds to send a whole request, and to take the whole answer.
TIMEOUT = 5.0
#: Longest request line plus headers (bytes).
MAX_HEAD = 8192
#: Default threads running the application.
WORKERS = 4

#: (status, body, content type)
Response = tuple[int, bytes, str]
#: The application: request path (without the query) -> response.
App = Callable[[str], Response]


class BoundedHTTPServer:
    """Serve ``app`` on ``(host, port)`` from one thread; ``OSError`` if it cannot bind."""

    def __init__(self, app: App, host: str, port: int, *,
                 max_connections: int = MAX_CONNECTIONS, timeout: float = TIMEOUT,
                 workers: int = WORKERS) -> None:
        if max_connections < 1 or not timeout > 0 or workers < 1:
            raise ValueError("max_connections, timeout and workers must be positive")
        self.app = app
        self._workers = ThreadPoolExecutor(workers, thread_name_prefix="stek-metrics-app")
        self.max_connections = max_connections
        self.timeout = timeout
        self._open: dict[asyncio.StreamWriter, None] = {}  # insertion order: oldest first
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            self._workers.shutdown(wait=False)
            raise
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD))
        self._thread = threading.Thread(target=self._loop.run_forever, name="stek-metrics",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop listening, drop every connection, end the thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        else:
            self._loop.run_until_complete(self._shutdown())
        self._loop.close()
        # An answer still being computed finishes on its own; nobody waits for it.
        self._workers.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self) -> None:
        self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._server.wait_closed()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def connections(self) -> int:
        return len(self._open)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open[writer] = None
        while len(self._open) > self.max_connections:
            oldest = next(iter(self._open))
            self._open.pop(oldest)
            oldest.transport.abort()
        done = False
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            answer = await asyncio.get_running_loop().run_in_executor(
                self._workers, self._answer, head)
            writer.write(answer)
            await asyncio.wait_for(writer.drain(), self.timeout)
            done = True
        except (TimeoutError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ConnectionError):
            pass  # too slow, too big, or gone: drop it
        finally:
            self._open.pop(writer, None)
            if done:
                writer.close()  # the answer is flushed: a clean FIN
            else:
                writer.transport.abort()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        head_only = False
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            code, body, ctype = 400, b"bad request\n", "text/plain; charset=utf-8"
        elif parts[0] not in ("GET", "HEAD"):
            code, body, ctype = 405, b"only GET\n", "text/plain; charset=utf-8"
        else:
            head_only = parts[0] == "HEAD"
            try:
                code, body, ctype = self.app(parts[1].split("?", 1)[0])
            except Exception:  # a bug must not take the server down
                log.exception("metrics: %s failed", parts[1])
                code, body, ctype = 500, b"internal error\n", "text/plain; charset=utf-8"
        status = HTTPStatus(code)
        lines = [f"HTTP/1.0 {status.value} {status.phrase}", f"Content-Type: {ctype}",
                 f"Content-Length: {len(body)}", "Connection: close"]
        if code == 405:
            lines.append("Allow: GET, HEAD")
        extra = b"" if head_only else body
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + extra
