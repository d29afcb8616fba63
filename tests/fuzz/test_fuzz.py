"""Each parser of untrusted bytes, fuzzed with hypothesis for a bounded number of examples.

The targets and what they assert are in fuzz_targets.py: af's own errors or a clean result, never
another exception, within `fuzz_targets.TIME_LIMIT` per input. `AF_FUZZ_EXAMPLES` sets the
examples per target (default `DEFAULT_EXAMPLES`, which keeps this file near 30 s on 2 cores;
`make fuzz` runs far longer, with atheris where it installs: tests/fuzz/run.py).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_targets
from mutations import fuzz_inputs

#: examples per target in the ordinary test run
DEFAULT_EXAMPLES = 4000
EXAMPLES = int(os.environ.get("AF_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
#: the importers compile what they accept (a few ms an input): a quarter of the examples keeps them
#: near the other targets' time; `make fuzz` gives them as long as the others
SLOW_TARGETS = {"fann": 4, "onnx_import": 4}


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    """Settings for a fuzz run: no deadline (the targets bound their own time), no example database."""
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(fuzz_targets.TARGETS))
def test_target(name: str):
    target = fuzz_targets.TARGETS[name]
    for seed in fuzz_targets.seeds(name):  # every seed first: the targets accept what the repository holds
        target(seed)

    @fuzz_settings(max(1, EXAMPLES // SLOW_TARGETS.get(name, 1)))
    @given(fuzz_inputs(fuzz_targets.seeds(name)))
    def fuzz(data: bytes) -> None:
        target(data)

    fuzz()


def test_a_foreign_exception_fails_a_target():
    @fuzz_targets._bounded
    def broken(data: bytes) -> None:
        raise KeyError(data)

    with pytest.raises(KeyError):
        broken(b"x")


def test_a_slow_input_fails_a_target(monkeypatch):
    monkeypatch.setattr(fuzz_targets, "TIME_LIMIT", 0.0)
    with pytest.raises(fuzz_targets.SlowInput):
        fuzz_targets.step(b"load_neural_network")


def test_af_errors_pass():
    fuzz_targets.bundle(b"not a bundle")  # AF4001, swallowed: the refusal af should give
