"""The docs keep up with the code: every error code and every command is documented."""

import re
from pathlib import Path

from af.cli import COMMAND_MODULES

ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ["af", "afcore", "afc", "afrt", "afdebug", "afprof"]


def codes_in_source() -> set[str]:
    codes = set()
    for package in SOURCE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            codes |= set(re.findall(r"\"(AF\d{4})\"", path.read_text(encoding="utf-8")))
    return codes


def test_the_scan_finds_codes():
    assert len(codes_in_source()) > 100


def test_every_error_code_is_documented():
    documented = set(re.findall(r"AF\d{4}", (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")))
    assert sorted(codes_in_source() - documented) == []


def test_every_command_has_a_section_in_cli_md():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in COMMAND_MODULES if f"## `af {name}`" not in text]
    assert missing == []


def test_readme_starts_with_the_two_commands():
    first = [line.split("#")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()[:2]]
    assert first == ["make demo", "make test"]
