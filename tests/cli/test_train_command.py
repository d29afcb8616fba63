"""`af train` as a user runs it: the weights change in place or in -o, the header says what made them,
--json has the history, Ctrl-C leaves the file untouched, bad input gets a diagnostic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import afc
from af.cli import app
from af.cli.train import OPTIMIZERS

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"
CORNERS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)


def train(*args):
    return CliRunner().invoke(app, ["train", *map(str, args)])


def xor_outputs(path: Path) -> np.ndarray:
    """The network of ``path`` on the four corners, computed here with numpy (tanh, then sigmoid)."""
    layers = afc.load_agent_file(path).spec().network.layers
    x = CORNERS
    for layer in layers[:-1]:
        x = np.tanh(x @ layer.weight.T.astype(np.float64) + layer.bias)
    last = layers[-1]
    return 1 / (1 + np.exp(-(x @ last.weight.T.astype(np.float64) + last.bias)))


@pytest.fixture
def xor(tmp_path) -> Path:
    path = tmp_path / "xor.af"
    shutil.copy(XOR, path)
    return path


class TestTrain:
    def test_trains_in_place_and_records_what_made_the_weights(self, xor):
        before = xor.read_bytes()
        result = train(xor, "--epochs", 300, "--optimizer", "adam", "--learning-rate", 0.05, "--seed", 3,
                       "--batch-size", 4)
        assert result.exit_code == 0, result.stderr
        assert xor.read_bytes() != before and f"trained {xor}" in result.stderr
        header = afc.load_agent_file(xor).yaml
        assert (header["training"]["optimizer"], header["training"]["epochs"], header["training"]["seed"]) == (
            "adam", 300, 3)
        outputs = xor_outputs(xor).ravel()
        assert ((outputs > 0.5) == np.array([False, True, True, False])).all(), outputs

    def test_output_elsewhere_and_json_history(self, xor, tmp_path):
        before = xor.read_bytes()
        out = tmp_path / "deep" / "trained.af"
        result = train(xor, "-o", out, "--epochs", 5, "--seed", 1, "--validation-split", 0.5, "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert xor.read_bytes() == before and out.exists()
        assert len(report["history"]) == 5 and report["training"]["seed"] == 1
        assert afc.validate(out) == [] or all(not d.is_error for d in afc.validate(out))

    def test_the_same_seed_gives_the_same_file_weights(self, xor, tmp_path):
        runs = []
        for name in ("a.af", "b.af"):
            assert train(xor, "-o", tmp_path / name, "--epochs", 10, "--seed", 9, "-q").exit_code == 0
            runs.append(afc.load_agent_file(tmp_path / name).sections["neural_weights"].payload)
        assert runs[0] == runs[1]

    def test_ctrl_c_leaves_the_file_untouched(self, xor, monkeypatch):
        before = xor.read_bytes()

        def interrupt(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(afc, "train_file", interrupt)
        result = train(xor, "--epochs", 5)
        assert result.exit_code == 130 and "untouched" in result.stderr and xor.read_bytes() == before

    def test_bad_data_file_is_a_diagnostic(self, xor, tmp_path):
        data = tmp_path / "bad.jsonl"
        data.write_text('{"input": [0, 1], "target": [1]}\n{"input": [0, "x"], "target": [1]}\n')
        result = train(xor, "--data", data)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output
        assert "bad.jsonl" in result.stderr and ":2" in result.stderr

    def test_missing_file_and_wrong_kind(self, tmp_path, example_bundles):
        assert train(tmp_path / "nope.af").exit_code == 2
        result = train(example_bundles["xor"])
        assert result.exit_code == 2 and "AF0904" in result.stderr

    def test_optimizer_choices_match_the_trainer(self):
        from afc.train import OPTIMIZERS as TRAINER_OPTIMIZERS

        assert OPTIMIZERS == TRAINER_OPTIMIZERS
        assert "[sgd|adam|rprop]" in CliRunner().invoke(app, ["train", "--help"]).output
