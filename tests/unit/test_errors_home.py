"""Every error type lives in stek.errors and is still importable from where it was."""

from __future__ import annotations

import ssl

import pytest

import stek
from helpers.certs import Certs, server_context
from stek import errors
from stek.stores.sealing import sealer_from


def test_a_missing_kek_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="stek kek PATH"):
        sealer_from("redis://h", env={})


@pytest.mark.usefixtures("no_kek_env")
def test_install_on_a_shared_store_without_a_kek_raises_config_error(certs: Certs) -> None:
    # redis-py connects on the first command: no server is needed to get here.
    ctx: ssl.SSLContext = server_context(certs)
    with pytest.raises(errors.ConfigError, match="needs a key-encryption key"):
        stek.install(ctx, "redis://127.0.0.1:1/0")


def test_moved_error_types_are_the_same_class_at_their_old_homes() -> None:
    from stek._probe_client import ProbeError
    from stek.mirror import MirroredRing as FromMirror
    from stek.stores.file import MirroredRing as FromFile

    assert ProbeError is errors.ProbeError
    assert FromMirror is FromFile is errors.MirroredRing
    assert issubclass(errors.MirroredRing, errors.ConfigError)
    assert issubclass(errors.ProbeError, errors.StekError)
