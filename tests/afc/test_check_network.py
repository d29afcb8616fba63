"""afc.check_network: notes and warnings about `neural_config` that are not errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import afc
from afc.check_network import LARGE_NETWORK_BYTES, check_network_size, check_output_activation, declared_parameters
from afc.yamlload import load_yaml
from afcore.spans import SourceFile

XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


def document(config: str):
    return load_yaml(SourceFile("a.af", f"neural_config:\n{config}"))


class TestOutputActivation:
    def test_softmax_over_one_output_warns(self):
        doc = document("  input_size: 2\n  output_size: 1\n  hidden_layers: []\n  activation_function: tanh\n"
                       "  output_activation: softmax\n")
        (diag,) = check_output_activation(doc)
        assert (diag.code, diag.severity) == ("AF2012", "warning")
        assert diag.message == "softmax over one output always gives 1.0" and "sigmoid" in diag.help
        assert (diag.span.line, diag.span.column) == (6, 22)

    @pytest.mark.parametrize("config", ["  output_size: 2\n  output_activation: softmax\n",
                                        "  output_size: 1\n  output_activation: sigmoid\n",
                                        "  output_size: 1\n"])
    def test_other_outputs_are_fine(self, config):
        assert check_output_activation(document(config)) == []

    def test_validate_reports_it_and_the_file_stays_valid(self, tmp_path):
        path = tmp_path / "one.af"
        path.write_bytes(XOR.read_bytes().replace(b'output_activation: "sigmoid"', b'output_activation: "softmax"'))
        diagnostics = afc.validate(path)
        assert [(d.code, d.severity) for d in diagnostics] == [("AF2012", "warning")]
        afc.load_agent_file(path)  # a warning, not an error


class TestNetworkSize:
    def test_parameters(self):
        doc = document("  input_size: 3\n  output_size: 2\n  hidden_layers: [4]\n")
        assert declared_parameters(doc) == 3 * 4 + 4 + 4 * 2 + 2

    def test_small_network_is_silent(self):
        assert check_network_size(document("  input_size: 3\n  output_size: 2\n  hidden_layers: [4]\n")) == []

    def test_large_network_gets_a_note_with_its_size(self):
        doc = document("  input_size: 16384\n  output_size: 16384\n  hidden_layers: []\n")
        (diag,) = check_network_size(doc)
        assert (diag.code, diag.severity) == ("AF2011", "note")
        assert diag.message == "`neural_config` declares 268,451,840 parameters: 1.0 GiB of float32"
        assert 4 * 268_451_840 >= LARGE_NETWORK_BYTES

    def test_invalid_sizes_say_nothing(self):
        doc = document("  input_size: 16384\n  output_size: 16384\n  hidden_layers: [x]\n")
        assert check_network_size(doc, valid=lambda path: path != ("neural_config", "hidden_layers")) == []
