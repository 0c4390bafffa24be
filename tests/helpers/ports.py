"""Free loopback ports for the servers the tests start.

Ports are taken below the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``), from which the kernel picks the
local port of every outgoing connection and of every ``bind(port 0)``: a port
found free there could be taken by a client connection before the server the
test starts binds it.  Under pytest-xdist the workers are separate processes;
each takes its own slice of that range, so no two ever pick the same port.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

#: Lowest port handed out: above the well-known and most registered services.
LOWEST = 10_000
#: Every port free_port() has handed out in this process.  A server's port is
#: free again once it stops, but a later test of the same run must not get it
#: while a lingering process of the earlier one may still hold it.
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _worker_share() -> tuple[int, int]:
    """(this worker's index, number of workers) under pytest-xdist; (0, 1) otherwise."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return 0, 1
    return int(worker[2:]) % count, count


def port_slice() -> range:
    """The ports this process may hand out: its worker's share below the ephemeral range."""
    index, count = _worker_share()
    span = (_ephemeral_low() - LOWEST) // count
    start = LOWEST + index * span
    return range(start, start + span)


def free_port() -> int:
    """A loopback port nothing listens on, never handed out before in this test run."""
    ports = port_slice()
    first = random.randrange(len(ports))  # spreads runs; not a secret (S311 is off)
    for i in range(len(ports)):
        port = ports[(first + i) % len(ports)]
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (or lingering in TIME_WAIT)
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free loopback port left in {ports.start}-{ports.stop - 1}")
