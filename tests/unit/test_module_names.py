"""Module names: none shadows the standard library, and renamed ones stay importable."""

from __future__ import annotations

import sys
from pathlib import Path

import stek

SRC = Path(stek.__file__).resolve().parent


def test_no_module_is_named_like_a_standard_library_one() -> None:
    """Where src/stek (or a folder in it) is first on sys.path, such a file is
    imported in the standard module's place: stek/inspect.py once broke
    ``dataclasses`` (which imports ``inspect``) that way."""
    shadowing = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*")
                       if (p.suffix == ".py" or p.is_dir()) and p.stem in sys.stdlib_module_names)
    assert shadowing == []


def test_stek_inspect_is_still_stek_inspection() -> None:
    """README.md documents ``stek.inspect.ticket_of``: the module's former name works
    as an attribute, in an import statement and in a from-import."""
    import stek.inspect
    from stek.inspect import ticket_of

    import stek.inspection

    assert stek.inspect is stek.inspection
    assert ticket_of is stek.inspection.ticket_of
    assert sys.modules["stek.inspect"] is sys.modules["stek.inspection"]
