"""Free loopback ports for the servers the tests start."""

from __future__ import annotations

import socket

#: Every port free_port() has handed out in this process.  The kernel may
#: offer a port again once the socket that found it is closed, so two servers
#: of one test (an etcd cluster's members) could otherwise get the same one.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never handed out before in this process."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("every free loopback port was handed out already in this test run")
