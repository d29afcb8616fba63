"""afc.agentfile and afc.build: the public API (load, validate, write) and the IR."""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import pytest
import safetensors.numpy
import zstandard

import afc
from afc.agentfile import load_agent_bytes, render_agent_file
from afc.tensors import encode_tensors
from afc.writer import write_container
from afcore.errors import CheckError, ParseError, SchemaError, UsageError
from afcore.spans import Span
from afcore.steps import Binary, Const, Field

HEADER = """\
# a comment that must survive
version: "1.0"
name: "tiny"   # trailing comment
neural_config:
  network_type: "feedforward"
  input_size: 3
  output_size: 2
  hidden_layers: [4, 5]
  activation_function: "gelu"
  output_activation: "softmax"
resources:
  limits:
    memory_mb: 64
workflows:
  initialization:
    - load_neural_network
  execution:
    - receive_input
    - process_neural_network
    - send_output(topic="out") when output.max > 0.9
  shutdown:
    - save_state(every=10)
"""


def make_weights(sizes=(3, 4, 5, 2), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"layers.{i}.weight"] = rng.standard_normal((fan_out, fan_in)).astype(np.float32)
        tensors[f"layers.{i}.bias"] = rng.standard_normal(fan_out).astype(np.float32)
    return tensors


@pytest.fixture
def weights():
    return make_weights()


@pytest.fixture
def af_path(tmp_path, weights):
    path = tmp_path / "tiny.af"
    path.write_bytes(write_container(HEADER, [("neural_weights", encode_tensors(weights))]))
    return path


class TestLoad:
    def test_header_tensors_and_steps(self, af_path, weights):
        agent = afc.load_agent_file(af_path)
        assert agent.header["neural_config"]["hidden_layers"] == [4, 5]
        assert agent.header_text == HEADER
        for name, array in weights.items():
            np.testing.assert_array_equal(agent.weights[name], array)
        assert agent.training_data is None
        send = agent.workflows["execution"][2]
        assert send.args == {"topic": "out"} and send.guard == Binary(">", Field("output", ("max",)), Const(0.9))
        assert agent.span_of(("neural_config", "input_size")) == Span(str(af_path), 6, 15, 6, 16)

    def test_hand_built_file_with_plain_libraries(self, tmp_path, weights):
        # Built from the spec with base64 + zstandard + safetensors only, not our writer.
        frame = zstandard.ZstdCompressor(write_checksum=True).compress(safetensors.numpy.save(weights))
        body = base64.encodebytes(frame).decode()
        data = (HEADER.replace("\n", "\r\n") + "---BINARY_SECTION:neural_weights---\r\n" + body).encode()
        agent = load_agent_bytes(b"\xef\xbb\xbf" + data, path="hand.af")
        np.testing.assert_array_equal(agent.weights["layers.2.weight"], weights["layers.2.weight"])
        assert agent.header["name"] == "tiny"

    def test_errors_raise_the_class_of_their_layer(self, weights):
        section = [("neural_weights", encode_tensors(weights))]
        with pytest.raises(ParseError):
            load_agent_bytes(write_container("a: &x 1\n", section), path="x.af")
        with pytest.raises(ParseError):
            load_agent_bytes(write_container(HEADER.replace("when output", "when outptu"), section), path="x.af")
        with pytest.raises(SchemaError):
            load_agent_bytes(write_container(HEADER.replace("gelu", "gleu"), section), path="x.af")
        with pytest.raises(CheckError):
            load_agent_bytes(write_container(HEADER, []), path="x.af")

    def test_schema_and_step_syntax_errors_in_one_run(self, weights):
        text = HEADER.replace("gelu", "gleu").replace("when output", "when outptu")
        with pytest.raises(ParseError) as info:
            load_agent_bytes(write_container(text, [("neural_weights", encode_tensors(weights))]), path="x.af")
        assert [d.code for d in info.value.diagnostics] == ["AF1004", "AF0072"]

    def test_schema_and_meaning_errors_in_one_run(self, weights):
        # A misspelt activation leaves the layer sizes valid: the weights are still compared with them.
        del weights["layers.2.bias"]
        text = HEADER.replace("gelu", "gleu").replace("- receive_input", "- recieve_input")
        with pytest.raises(SchemaError) as info:
            load_agent_bytes(write_container(text, [("neural_weights", encode_tensors(weights))]), path="x.af")
        assert [d.code for d in info.value.diagnostics] == ["AF1004", "AF2020", "AF2002"]
        assert info.value.code == "AF1004" and "(and 2 more errors)" in str(info.value)

    def test_meaning_errors_alone_raise_check_error(self, weights):
        with pytest.raises(CheckError) as info:
            load_agent_bytes(write_container(HEADER.replace("- receive_input", "- recieve_input"),
                                             [("neural_weights", encode_tensors(weights))]), path="x.af")
        assert [d.code for d in info.value.diagnostics] == ["AF2020"]

    def test_validate_returns_every_layer_sorted_by_position(self, tmp_path, weights):
        weights["layers.0.bias"][0] = np.inf
        text = HEADER.replace("[4, 5]", "[4, five]").replace("when output", "when outptu").replace(
            "memory_mb: 64", "memory_mb: 64\n  requirements:\n    minimum_memory_mb: 65")
        path = tmp_path / "many.af"
        path.write_bytes(write_container(text, [("neural_weights", encode_tensors(weights))]))
        found = [(d.code, d.span.line) for d in afc.validate(path)]
        assert found == [("AF1002", 8), ("AF2010", 15), ("AF0072", 22), ("AF2103", 25)]

    def test_unreadable_file(self, tmp_path):
        with pytest.raises(UsageError) as info:
            afc.load_agent_file(tmp_path / "missing.af")
        assert info.value.code == "AF0901"


class TestValidate:
    def test_valid_file_has_no_diagnostics(self, af_path):
        assert afc.validate(af_path) == []

    def test_never_raises_source_errors(self, tmp_path):
        path = tmp_path / "bad.af"
        path.write_bytes(b"version: [\n")
        assert [d.code for d in afc.validate(path)] == ["AF0050"]

    def test_warnings_are_returned(self, tmp_path, weights):
        weights["layers.0.bias"][1] = np.nan
        path = tmp_path / "nan.af"
        path.write_bytes(write_container(HEADER, [("neural_weights", encode_tensors(weights))]))
        assert [(d.code, d.severity) for d in afc.validate(path)] == [("AF2103", "warning")]


class TestWrite:
    def test_read_then_write_is_byte_identical(self, af_path, tmp_path):
        out = tmp_path / "copy.af"
        afc.write_agent_file(out, afc.load_agent_file(af_path))
        assert out.read_bytes() == af_path.read_bytes()

    def test_hand_written_file_is_kept_byte_for_byte(self, tmp_path, weights):
        frame = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(safetensors.numpy.save(weights))
        data = (HEADER + "---BINARY_SECTION:neural_weights---\n").encode() + frame
        agent = load_agent_bytes(data, path="h.af")
        assert render_agent_file(agent) == data

    def test_reading_the_tree_without_editing_keeps_the_text(self, af_path):
        agent = afc.load_agent_file(af_path)
        assert agent.yaml["name"] == "tiny"
        assert render_agent_file(agent) == af_path.read_bytes()

    def test_edit_keeps_comments_order_and_sections(self, af_path):
        agent = afc.load_agent_file(af_path)
        agent.yaml["neural_config"]["learning_rate"] = 0.01
        data = render_agent_file(agent)
        again = load_agent_bytes(data, path="e.af")
        assert again.header_text == HEADER.replace(
            '  output_activation: "softmax"\n', '  output_activation: "softmax"\n  learning_rate: 0.01\n')
        assert data.endswith(af_path.read_bytes()[agent.container.sections[0].offset:])

    def test_crlf_and_bom_survive_an_edit(self, tmp_path, weights):
        data = write_container(HEADER.replace("\n", "\r\n"), [("neural_weights", encode_tensors(weights))],
                               newline="\r\n", bom=True)
        agent = load_agent_bytes(data, path="c.af")
        agent.yaml["name"] = "tiny2"
        out = render_agent_file(agent)
        assert out.startswith(b"\xef\xbb\xbf# a comment") and b"\n" not in out.replace(b"\r\n", b"")[:400]
        assert load_agent_bytes(out, path="c.af").header["name"] == "tiny2"

    def test_change_encoding(self, af_path, weights):
        agent = afc.load_agent_file(af_path)
        raw = load_agent_bytes(render_agent_file(agent, raw=True), path="r.af")
        assert raw.sections["neural_weights"].encoding == "raw"
        np.testing.assert_array_equal(raw.weights["layers.1.weight"], weights["layers.1.weight"])
        assert render_agent_file(raw, raw=False) == af_path.read_bytes()


class TestBuild:
    def test_network_matches_a_float64_forward_pass(self, af_path, weights):
        spec = afc.load_agent_file(af_path).spec()
        net = spec.network
        assert (net.input_size, net.output_size, net.hidden_activation, net.output_activation) == (3, 2, "gelu", "softmax")
        assert [layer.activation for layer in net.layers] == ["gelu", "gelu", "softmax"]
        assert net.parameters == sum(a.size for a in weights.values())
        for i, layer in enumerate(net.layers):
            assert layer.weight.dtype == np.float32 and layer.weight.flags.c_contiguous
            assert not layer.weight.flags.writeable
            np.testing.assert_array_equal(layer.weight, weights[f"layers.{i}.weight"])
            np.testing.assert_array_equal(layer.bias, weights[f"layers.{i}.bias"])

    def test_agent_fields(self, af_path):
        spec = afc.load_agent_file(af_path).spec()
        assert (spec.name, spec.version) == ("tiny", "1.0")
        assert spec.source_sha256 == hashlib.sha256(af_path.read_bytes()).hexdigest()
        assert list(spec.workflows) == ["initialization", "execution", "shutdown"]
        assert spec.workflows["shutdown"].steps[0].args == {"every": 10}
        assert spec.resources.limits == {"memory_mb": 64.0}
        assert spec.network.layers[0].span.line == 8 and spec.training_data is None

    def test_output_activation_defaults_to_linear(self, tmp_path, weights):
        text = HEADER.replace('  output_activation: "softmax"\n', "")
        agent = load_agent_bytes(write_container(text, [("neural_weights", encode_tensors(weights))]), path="l.af")
        assert agent.spec().network.layers[-1].activation == "linear"

    def test_training_data_and_extra_sections(self, weights):
        inputs, targets = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
        data = write_container(HEADER, [("neural_weights", encode_tensors(weights)),
                                        ("training_data", encode_tensors({"inputs": inputs, "targets": targets})),
                                        ("notes", b"hello")])
        spec = load_agent_bytes(data, path="t.af").spec()
        np.testing.assert_array_equal(spec.training_data[0], inputs)
        assert spec.extra_sections == {"notes": b"hello"}


class TestHostileHeaders:
    """Whatever the header holds, validation answers with diagnostics, never an exception."""

    @staticmethod
    def mutate(text: str, seed: int) -> str:
        import random

        rng = random.Random(seed)
        alphabet = list(":-[]{}&*!#|>'\"\n \t,?%@`\\.0123456789when()=<>") + ["\u202e", "\x00", "\x85", "é"]
        chars = list(text)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(chars))
            choice = rng.random()
            if choice < 0.4:
                chars.insert(pos, rng.choice(alphabet))
            elif choice < 0.7:
                del chars[pos]
            else:
                chars[pos] = rng.choice(alphabet)
        return "".join(chars)

    def test_mutated_headers_never_raise(self, weights):
        from afc.agentfile import validate_bytes

        section = [("neural_weights", encode_tensors(weights))]
        for seed in range(300):
            found = validate_bytes(write_container(self.mutate(HEADER, seed), section), path="m.af")
            assert all(d.code.startswith("AF") and d.span is not None for d in found)

    def test_overlong_step_is_left_to_the_schema(self, weights):
        text = HEADER.replace("- load_neural_network", "- load_neural_network when " + "(" * 600 + "1" + ")" * 600)
        with pytest.raises(SchemaError) as info:
            load_agent_bytes(write_container(text, [("neural_weights", encode_tensors(weights))]), path="x.af")
        assert [d.code for d in info.value.diagnostics] == ["AF1008"]


class TestExamples:
    """The examples in examples/ (built by the container work) validate and keep the reference header."""

    ROOT = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples"

    @pytest.mark.parametrize("name", ["classification-agent.af", "xor.af"])
    def test_validates_without_diagnostics(self, name):
        assert afc.validate(self.ROOT / name) == []

    def test_reference_header_is_unchanged_and_builds(self):
        agent = afc.load_agent_file(self.ROOT / "classification-agent.af")
        assert agent.header_text.startswith("# Agent File Format v1.0\nversion: \"1.0\"\nname: \"classification-agent\"")
        assert agent.header["workflows"]["shutdown"] == ["save_state", "disconnect_from_swarm", "cleanup_resources"]
        spec = agent.spec()
        assert [(layer.in_size, layer.out_size) for layer in spec.network.layers] == [(784, 128), (128, 64), (64, 32), (32, 10)]
        assert spec.network.output_activation == "linear"

    def test_reference_header_round_trips_through_ruamel(self):
        from afc.yamlload import dump_round_trip

        agent = afc.load_agent_file(self.ROOT / "classification-agent.af")
        assert dump_round_trip(agent.yaml) == agent.header_text
