"""Golden diagnostics: each `cases/AFxxxx-*.af` renders exactly as its `.expected` file (ruff-style snapshots).

The rendering is the full format of `af validate` (afcore.diagnostics.render), with paths relative to
this directory. To refresh after a deliberate change of wording: `AF_UPDATE_GOLDEN=1 pytest tests/diagnostics`,
then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import afc
from afcore.diagnostics import render

HERE = Path(__file__).parent
CASES = sorted((HERE / "cases").glob("*.af"))


def render_case(case: Path) -> str:
    relative = case.relative_to(HERE).as_posix()
    return render(afc.validate(relative), "full") + "\n"


def test_there_is_a_case_per_code():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(HERE)
    actual = render_case(case)
    expected_file = case.with_suffix(".expected")
    # bytes, not text: reading text would turn a CR the source frame shows (AF0020) into a newline
    if os.environ.get("AF_UPDATE_GOLDEN") == "1":
        expected_file.write_bytes(actual.encode("utf-8"))
    assert actual == expected_file.read_bytes().decode("utf-8")
    assert f"[{case.name[:6]}]" in actual  # the case's own code is among its diagnostics
