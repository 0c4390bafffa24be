"""The suite's port picker: each server a test starts gets a port of its own."""

from __future__ import annotations

from helpers.ports import free_port


def test_free_port_never_hands_out_a_port_twice() -> None:
    """An etcd cluster picks six ports in a row; the kernel may offer one again
    as soon as the probe socket that found it is closed (two members were once
    given the same client port, and one failed with "address already in use").
    2,000 picks in a row: without the memory of ports handed out, the kernel's
    ephemeral range (about 28,000 ports) repeats some, as birthdays do."""
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
