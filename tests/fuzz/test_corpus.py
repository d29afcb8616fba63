"""Every input a fuzz target ever failed on (tests/corpus/fuzz/<target>/) passes it now."""

from __future__ import annotations

import pytest

import fuzz_targets


@pytest.mark.parametrize("name", sorted(fuzz_targets.TARGETS))
def test_replays_clean(name: str):
    directory = fuzz_targets.CORPUS / name
    assert directory.is_dir(), f"{directory} is missing (crashes found by `make fuzz` are kept there)"
    for path in fuzz_targets.corpus(name):
        fuzz_targets.TARGETS[name](path.read_bytes())
