"""``import stek`` stays light: no metrics library, no store client until one is used.

Each check runs a fresh interpreter, since this one has long imported them all.
"""

from __future__ import annotations

import json
import subprocess
import sys

#: Loaded only by the agent (metrics) or by opening a store of that kind.
HEAVY = ("prometheus_client", "redis", "etcd3gw", "requests")


def loaded_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    return {name.split(".")[0] for name in json.loads(proc.stdout.splitlines()[-1])}


def test_import_stek_loads_no_metrics_library_and_no_store_client() -> None:
    loaded = loaded_after("import stek")
    assert "stek" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_opening_a_redis_store_loads_its_client_and_still_no_metrics_library() -> None:
    # No server needed: redis-py connects on the first command, not here.
    loaded = loaded_after(
        "import stek, base64\n"
        "stek.open_store('redis://127.0.0.1:1/0', kek=base64.b64encode(bytes(range(32))).decode())")
    assert "redis" in loaded
    assert "prometheus_client" not in loaded


def test_the_binding_layer_does_not_load_the_asn1_decoder() -> None:
    loaded = loaded_after("import stek.hazmat.libssl")
    assert "asn1crypto" not in loaded
    assert "stek" in loaded


def test_mirror_collector_is_still_importable_from_stek_mirror() -> None:
    loaded = loaded_after("from stek.mirror import MirrorCollector\n"
                          "assert MirrorCollector.__name__ == 'MirrorCollector'")
    assert "prometheus_client" in loaded


def test_import_stek_runs_no_ticket_inspection_until_it_is_used() -> None:
    """``stek.inspect`` and ``stek.inspection`` are one lazy module: its ASN.1
    decoder loads on first use, not with ``import stek``."""
    assert "asn1crypto" not in loaded_after("import stek\nassert stek.inspect is stek.inspection")
    assert "asn1crypto" in loaded_after("import stek\nstek.inspect.ticket_of")
