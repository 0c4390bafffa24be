"""The README's decision table says what stek.schedule.LIFECYCLE does."""

from __future__ import annotations

import re
from pathlib import Path

from stek.schedule import LIFECYCLE, State

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| (pending|active|decrypt-only|expired or unknown) \|(.*)$", re.M)


def test_readme_table_matches_the_lifecycle() -> None:
    rows = {m.group(1).split()[0]: [c.strip() for c in m.group(2).split("|")]
            for m in ROW.finditer(README.read_text())}
    assert set(rows) == {s.value for s in State}
    for state, row in LIFECYCLE.items():
        _when, enc1, enc0, *_ = rows[state.value]
        assert ("never" in enc1 or enc1 == "—") != row.encrypts, (state, enc1)
        expected = (str(int(row.answer_tls12)) if row.answer_tls12 == row.answer_tls13
                    else f"{int(row.answer_tls12)} / {int(row.answer_tls13)}")
        assert enc0.startswith(expected), (state, enc0, expected)
