"""Fixtures of the integration tests: a real store server for one test.

Each starts on a free port of 127.0.0.1 with its data in the test's
tmp_path, and is stopped (whatever the test did to it) when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.store_servers import EtcdServer, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server in ``tmp_path / "redis"``."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd in ``tmp_path / "etcd"``."""
    with EtcdServer(tmp_path / "etcd") as server:
        yield server
