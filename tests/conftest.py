"""Shared fixtures and the tiers: tests/unit runs in-process, tests/integration runs real programs.

Tests start the real servers they need on 127.0.0.1, in temp dirs, and stop
them.  In CI (``CI`` set) a missing program is a failure, never a skip.
Plain functions live in tests/helpers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.certs import Certs, make_certs

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration is marked ``integration`` (``-m "not integration"``)."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def no_kek_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key-encryption key or store from the environment: each test says its own."""
    for var in ("STEK_KEK", "STEK_KEK_FILE", "STEK_INSECURE_PLAINTEXT", "STEK_STORE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def kek_file(tmp_path: Path) -> Path:
    """A fresh key-encryption key file (mode 0600) for a sealed shared store."""
    from stek.stores.sealing import write_kek_file

    path = tmp_path / "fleet.kek"
    write_kek_file(path)
    return path
