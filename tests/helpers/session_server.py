"""A stek-installed server whose sessions the session-codec tests decode."""

from __future__ import annotations

import pytest

from helpers.tickets import key_in_state, now, ring_of, stek_server


@pytest.fixture
def server(certs, tmp_path):  # type: ignore[no-untyped-def]
    with stek_server(certs, tmp_path, ring_of(key_in_state("active", now()))) as srv:
        yield srv
