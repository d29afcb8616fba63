"""afc.check_network: notes and warnings about `neural_config` that are not errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import afc
from afc.check_network import (
    LARGE_NETWORK_BYTES,
    check_backends,
    check_network_size,
    check_output_activation,
    declared_parameters,
)
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


def header(input_size: int, output_size: int, hidden: str = "[]", memory_mb: str = "") -> str:
    limits = f"resources:\n  limits:\n    memory_mb: {memory_mb}\n" if memory_mb else ""
    return (f"neural_config:\n  input_size: {input_size}\n  output_size: {output_size}\n  hidden_layers: {hidden}\n"
            f"  activation_function: relu\n  output_activation: linear\n{limits}")


def backends(text: str):
    return [(d.code, d.severity) for d in check_backends(load_yaml(SourceFile("a.af", text)))]


class TestBackends:
    """What `af compile` (both targets) and `af run --backend wasm` would refuse, said by `af validate`."""

    def test_small_network_is_silent(self):
        assert backends(header(4, 2, "[8]", memory_mb="64")) == []

    def test_too_big_for_onnx_only(self):
        assert backends(header(1048576, 600)) == [("AF2013", "warning")]

    def test_too_big_for_both_is_an_error(self):
        assert backends(header(1048576, 1100)) == [("AF2013", "warning"), ("AF2014", "error")]

    def test_memory_mb_below_the_module_memory(self):
        (diag,) = check_backends(load_yaml(SourceFile("a.af", header(4096, 4096, memory_mb="32"))))
        assert diag.code == "AF2015" and "AF5012" in diag.help and diag.span.line == 9

    @pytest.mark.parametrize("example", sorted(XOR.parent.glob("*.af")), ids=lambda p: p.name)
    def test_pages_from_the_header_are_the_compiled_modules(self, example):
        from afc.check_network import _shape_network
        from afc.compile import WASM_MAX_BATCH
        from afc.lower_wasm import lower_network, plan_memory_pages

        agent = afc.load_agent_file(example)
        stand_in = _shape_network(agent.document, lambda path: True)
        module = lower_network(agent.spec().network, max_batch=WASM_MAX_BATCH)
        assert plan_memory_pages(stand_in, max_batch=WASM_MAX_BATCH) == module.memory_pages

    def test_onnx_estimate_is_the_backends(self, make_network):
        from afc.lower_onnx import network_model_bytes
        from afc.spec import onnx_model_bytes

        network = make_network([5, 7, 3], "relu", "linear")
        assert len(network_model_bytes(network)) <= onnx_model_bytes(network.parameters)
