"""The suite's port picker: each server a test starts gets a port of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.ports import free_port, port_slice


def test_free_port_never_hands_out_a_port_twice() -> None:
    """An etcd cluster picks six ports in a row; the kernel may offer one again
    as soon as the probe socket that found it is closed (two members were once
    given the same client port, and one failed with "address already in use").
    2,000 picks in a row: without the memory of ports handed out, random picks
    from the range (over 20,000 ports) would repeat some, as birthdays do."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_parallel_workers_pick_from_disjoint_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pytest-xdist each worker is a process with its own memory of ports
    handed out: each takes its own slice of the port range, so two workers
    starting servers at the same moment never pick the same port."""
    picked: dict[int, set[int]] = {}
    for index in range(4):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
        share = port_slice()
        picked[index] = {free_port() for _ in range(50)}
        assert all(port in share for port in picked[index])
    assert all(not picked[a] & picked[b] for a in picked for b in picked if a < b)


def test_ports_lie_below_the_kernels_ephemeral_range() -> None:
    """The kernel takes every outgoing connection's local port (and every
    bind to port 0) from its ephemeral range: a port found free there could be
    taken by a client before the test's server binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(free_port() < low for _ in range(100))
