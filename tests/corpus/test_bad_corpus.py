"""Every hostile or broken file in tests/corpus/bad/ gets its expected diagnostic, never a traceback.

Convention: `NAME.af` beside `NAME.code`, which holds the one code that must be reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import afc
from af.cli import app

BAD = Path(__file__).parent / "bad"
CASES = sorted(BAD.glob("*.af"))


def test_corpus_is_not_empty():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
class TestBadFile:
    def test_expected_code_is_reported(self, case: Path):
        expected = case.with_suffix(".code").read_text().strip()
        codes = [d.code for d in afc.validate(case)]
        assert expected in codes

    def test_cli_reports_without_traceback(self, case: Path):
        expected = case.with_suffix(".code").read_text().strip()
        result = CliRunner().invoke(app, ["validate", str(case), "--format", "concise"])
        assert "Traceback" not in result.output
        if expected == "AF0023":
            # a file that is plainly no af file is, on the command line, a file of the wrong kind:
            # the usage error that names it (the same detector, afcore.sniff, decides both)
            assert "AF0904" in result.output and result.exit_code == 2
        else:
            assert expected in result.output and result.exit_code in (0, 1)
