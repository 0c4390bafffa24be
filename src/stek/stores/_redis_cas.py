"""The Redis compare-and-set script, run on the connection one thread holds.

Redis runs a script atomically
(https://redis.io/docs/latest/develop/interactive/programmability/eval-intro/),
so the script sets the new value only if the current one is still the value
the mutation was computed from.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from redis.connection import Connection

from .sealing import MAX_VALUE_BYTES

# KEYS[1] = the ring's key; ARGV[1] = "1" if a value was read ("0" if the key
# was absent or empty), ARGV[2] = that value, ARGV[3] = the new value,
# ARGV[4] = MAX_VALUE_BYTES: a larger value is not even copied into the
# script (it cannot equal one read, which _load bounds).
# Returns 1 when written, 0 when another writer changed the value first.
_CAS = """
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[4]) then
  return 0
end
local cur = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and (cur == false or cur == '')) or (ARGV[1] == '1' and cur == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
_CAS_SHA = hashlib.sha1(_CAS.encode()).hexdigest()  # noqa: S324 - the script's name in Redis


class Link:
    """The store's connection, held by one thread: a write, ``ROLE`` and ``WAIT`` all on it.

    ``WAIT`` counts the replicas that acknowledged the writes *of the
    connection it runs on* (https://redis.io/docs/latest/commands/wait/).
    The store has one connection (:mod:`._redis_channel`), held for the
    whole sequence so that no other thread's command comes between; and the
    sequence never goes through redis-py's retry: a reconnection between a
    write and its ``WAIT`` would leave ``WAIT`` on another connection.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def call(self, *args: Any) -> Any:
        # No health check either: its PING may reconnect the socket.
        self.conn.send_command(*args, check_health=False)
        return self.conn.read_response()

    def cas(self, key: str, *args: Any) -> bool:
        args = (*args, MAX_VALUE_BYTES)
        try:
            done = self.call("EVALSHA", _CAS_SHA, 1, key, *args)
        except redis.exceptions.NoScriptError:
            done = self.call("EVAL", _CAS, 1, key, *args)  # loads it, for the next EVALSHA
        return bool(done)
