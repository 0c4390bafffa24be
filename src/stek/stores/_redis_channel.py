"""The Redis store's one connection: its commands and its change notifications.

A store object talks to Redis over one connection, whichever threads use it
(an installation's refresher, the agent's passes and its /metrics probe) and
whether or not it watches the ring: a fleet of N hosts, each with one
mirroring agent, is N clients of the store, not 2N.  This relies on RESP3
(Redis 6 and later), where a connection subscribed to a channel may still
send any command, and receives the channel's messages as push replies
between the replies to its commands
(https://redis.io/docs/latest/develop/reference/protocol-spec/#pushes).

Threads take turns under one lock: a command is sent and its reply read
while holding it, and a push met on the way is handed to the subscribers
then (redis-py's parser, its own RESP3 one or hiredis's from redis-py 6.2
on, calls the push handler and reads on).  The watch thread waits for the
socket to become readable without the lock (``select``), then reads
whatever pushes are there under it.  An unsubscribe asked for by a finalizer
in a thread that is between a command and its reply waits for the reply
(stek._serial).

A connection that fails is dropped; the next command connects again (through
the pool, so TLS, AUTH and a Sentinel's choice of primary are as configured)
and the watch thread, which notices that the connection it subscribed on is
gone, subscribes again, which notifies: the consumer re-reads whatever it
missed.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.connection import Connection

from .._serial import Serial

#: A redis-py connection.  Typed loosely: the push handling used here
#: (``read_response(push_request=True)``, the parser's push handler, the
#: socket to wait on) is not in redis-py's declared types.
Conn = Any

#: What a dead or replaced connection raises (redis-py wraps socket errors in
#: ConnectionError; a closed descriptor may surface as OSError or ValueError).
_LOST = (redis.ConnectionError, redis.TimeoutError, OSError, ValueError)


def checkout(pool: redis.ConnectionPool) -> Connection:
    """A connected connection from ``pool``."""
    # redis-py 6.0 and later need no command name (the stubs still ask for one).
    return pool.get_connection()  # type: ignore[call-arg]


class Channel:
    """One RESP3 connection shared by a store object's threads and its watches."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._serial = Serial()  # see stek._serial: a finalizer may unsubscribe mid-command
        self._conn: Conn | None = None
        #: Counts the connections made: the pool may hand the same object out
        #: again, reconnected, so a watch tells its connection by this number.
        self._epoch = 0
        #: Subscribers, by watch: called for every message on the channel.
        self._subscribers: dict[int, Callable[[], None]] = {}

    def _check_fork(self) -> None:
        """In a forked child: the parent's socket, lock and watches are not ours."""
        if self._pid == os.getpid():
            return
        conn = self._conn
        self._reset()
        if conn is not None:
            with contextlib.suppress(*_LOST):
                conn.disconnect()  # closes this process's descriptor only (redis-py checks the pid)

    # -- under the lock ---------------------------------------------------------------
    def _connection(self) -> Conn:
        if self._conn is None:
            conn: Conn = checkout(self._pool)  # TLS, AUTH, HELLO 3, the Sentinels' primary
            conn._parser.set_pubsub_push_handler(self._push)
            self._conn = conn
            self._epoch += 1
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_LOST):
                conn.disconnect()
            self._pool.release(conn)

    def _live(self, epoch: int) -> Conn | None:
        """The connection, if it is still connection number ``epoch``."""
        return self._conn if epoch == self._epoch else None

    def _drain(self, conn: Conn) -> None:
        """Read the pushes already waiting (each goes to :meth:`_push`)."""
        while conn.can_read(timeout=0):
            conn.read_response(push_request=True)

    def _push_command(self, conn: Conn, *args: Any) -> None:
        """(UN)SUBSCRIBE, whose confirmation is itself a push."""
        try:
            conn.send_command(*args)
            conn.read_response(push_request=True)
        except BaseException:
            self._drop()
            raise

    def _push(self, message: Any) -> Any:
        kind = message[0] if message else b""
        if kind in (b"message", "message"):
            for fn in list(self._subscribers.values()):
                fn()
        return message

    # -- any thread -------------------------------------------------------------------
    def call(self, *args: Any) -> Any:
        """Send one command and return its reply; once more on a new connection if it was dead.

        Only for commands that may run twice (reads, ``ROLE``, ``PUBLISH``): a
        connection lost mid-reply may have run the command already.  Writes
        go through :meth:`hold`, which never retries.
        """
        self._check_fork()
        with self._serial.held():
            for last in (False, True):
                conn = self._connection()
                try:
                    conn.send_command(*args)
                    reply = conn.read_response()
                    self._drain(conn)
                    return reply
                except _LOST:
                    self._drop()
                    if last:
                        raise
                except redis.ResponseError:
                    raise  # the server answered: the connection is fine
                except BaseException:
                    self._drop()  # a reply may be pending: never reuse it half-read
                    raise
            raise AssertionError("unreachable")

    @contextlib.contextmanager
    def hold(self) -> Iterator[Conn]:
        """The connection, to this thread alone, for a sequence that must stay on it."""
        self._check_fork()
        with self._serial.held():
            conn = self._connection()
            try:
                yield conn
                self._drain(conn)
            except redis.ResponseError:
                raise
            except BaseException:
                self._drop()
                raise

    def subscribe(self, channel: str, key: int, fn: Callable[[], None]) -> int:
        """Call ``fn`` for every message on ``channel``; returns the connection's number."""
        self._check_fork()
        with self._serial.held():
            self._push_command(self._connection(), "SUBSCRIBE", channel)
            self._subscribers[key] = fn
            return self._epoch

    def unsubscribe(self, channel: str, key: int, epoch: int) -> None:
        """Stop calling watch ``key``; the last one to leave ends the subscription.

        From a finalizer run while this thread is between a command and its
        reply, UNSUBSCRIBE would take that reply: it is sent after the reply.
        """
        self._check_fork()

        def leave() -> None:
            conn = self._live(epoch)
            if self._subscribers.pop(key, None) is None or self._subscribers or conn is None:
                return
            self._push_command(conn, "UNSUBSCRIBE", channel)

        self._serial.run(leave)

    def pump(self, epoch: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for pushes on connection ``epoch`` and deliver them.

        False once that is no longer this channel's connection (another
        thread dropped it): subscribe again.  Raises if it fails here.
        """
        self._check_fork()
        with self._serial.held():
            conn = self._live(epoch)
            sock = conn._sock if conn is not None else None
        if sock is None:
            return False
        try:
            select.select([sock], [], [], timeout)
        except (OSError, ValueError):  # closed meanwhile by another thread
            return False
        with self._serial.held():
            conn = self._live(epoch)
            if conn is None:
                return False
            try:
                self._drain(conn)
            except BaseException:
                self._drop()
                raise
        return True

    def close(self) -> None:
        self._check_fork()

        def close() -> None:
            self._subscribers.clear()
            self._drop()

        self._serial.run(close)
