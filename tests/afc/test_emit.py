"""The bundle an agent compiles to: manifest (against its JSON schema), members, reproducibility, examples."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import load as load_safetensors

import afc
from afc.compile import compile_agent, compile_file, parse_targets
from afcore.bundle import read_bundle
from afcore.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.af"))
SCHEMA = json.loads((ROOT / "schemas" / "afb-manifest-1.0.schema.json").read_text())
XOR = ROOT / "examples" / "xor.af"


@pytest.fixture(scope="module")
def xor_spec():
    return afc.load_agent_file(XOR).spec()


@pytest.fixture(scope="module")
def xor_bundle(xor_spec):
    return read_bundle(compile_agent(xor_spec))


def onnx_run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


class TestManifest:
    def test_validates_against_the_schema(self, xor_bundle):
        jsonschema.Draft202012Validator(SCHEMA).validate(xor_bundle.manifest)

    def test_schema_itself_is_valid(self):
        jsonschema.Draft202012Validator.check_schema(SCHEMA)

    def test_agent_source_and_compiler(self, xor_bundle, xor_spec):
        manifest = xor_bundle.manifest
        assert manifest["agent"]["name"] == xor_spec.name == "xor-agent"
        assert manifest["source"]["file"] == "xor.af"
        assert manifest["source"]["sha256"] == xor_spec.source_sha256
        assert manifest["compiler"]["name"] == "af"
        assert manifest["targets"] == ["onnx", "wasm"]
        assert manifest["onnx"] == {"member": "model.onnx", "opset": 21, "ir_version": 10}
        assert manifest["wasm"]["abi"] == 1 and manifest["wasm"]["max_batch"] >= 1

    def test_network_signature_and_layers(self, xor_bundle, xor_spec):
        network = xor_bundle.manifest["network"]
        assert network["input"] == {"name": "input", "dtype": "float32", "shape": [None, 2]}
        assert network["output"] == {"name": "output", "dtype": "float32", "shape": [None, 1]}
        assert [(lay["in"], lay["out"], lay["activation"]) for lay in network["layers"]] == [
            (2, 4, "tanh"), (4, 1, "sigmoid")]
        assert network["parameters"] == xor_spec.network.parameters == 17

    def test_workflows_are_step_trees_with_basename_spans(self, xor_bundle, xor_spec):
        workflows = xor_bundle.manifest["workflows"]
        assert set(workflows) == {"initialization", "execution", "shutdown"}
        for name, steps in workflows.items():
            assert [s["name"] for s in steps] == [s.name for s in xor_spec.workflows[name].steps]
            for step in steps:
                assert step["span"]["path"] == "xor.af"

    def test_resources(self, xor_bundle, xor_spec):
        assert xor_bundle.manifest["resources"]["limits"] == dict(xor_spec.resources.limits)


class TestMembers:
    def test_weights_round_trip(self, xor_bundle, xor_spec):
        tensors = load_safetensors(xor_bundle.members["weights.safetensors"])
        for layer in xor_spec.network.layers:
            np.testing.assert_array_equal(tensors[f"layers.{layer.index}.weight"], layer.weight)
            np.testing.assert_array_equal(tensors[f"layers.{layer.index}.bias"], layer.bias)

    def test_training_data_and_header(self, xor_bundle, xor_spec):
        data = load_safetensors(xor_bundle.members["training_data.safetensors"])
        np.testing.assert_array_equal(data["inputs"], xor_spec.training_data[0])
        assert xor_bundle.members["agent.yaml"].decode() == xor_spec.header_text

    def test_onnx_only_target(self, xor_spec):
        bundle = read_bundle(compile_agent(xor_spec, targets=("onnx",)))
        assert "model.wasm" not in bundle.members and "wasm" not in bundle.manifest
        assert bundle.manifest["targets"] == ["onnx"]
        jsonschema.Draft202012Validator(SCHEMA).validate(bundle.manifest)

    def test_extra_sections_pass_through(self, xor_spec):
        spec = dataclasses.replace(xor_spec, extra_sections={"notes": b"opaque \x00 bytes"})
        bundle = read_bundle(compile_agent(spec, targets=("onnx",)))
        assert bundle.members["sections/notes"] == b"opaque \x00 bytes"

    def test_xor_solves_xor_in_both_backends(self, xor_bundle, wasm_runner):
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
        expected = np.array([[0], [1], [1], [0]])
        assert np.array_equal(onnx_run(xor_bundle.members["model.onnx"], x) > 0.5, expected == 1)
        assert np.array_equal(wasm_runner(xor_bundle.members["model.wasm"], x, 1) > 0.5, expected == 1)


class TestReproducible:
    def test_same_file_same_bytes(self, tmp_path):
        first = compile_file(XOR, output=tmp_path / "a.afb").read_bytes()
        second = compile_file(XOR, output=tmp_path / "b.afb").read_bytes()
        assert first == second

    def test_independent_of_the_source_directory(self, tmp_path):
        copy = tmp_path / "elsewhere" / "xor.af"
        copy.parent.mkdir()
        shutil.copy(XOR, copy)
        assert compile_file(copy).read_bytes() == compile_file(XOR, output=tmp_path / "x.afb").read_bytes()

    def test_default_output_is_beside_the_source(self, tmp_path):
        copy = tmp_path / "xor.af"
        shutil.copy(XOR, copy)
        assert compile_file(copy) == tmp_path / "xor.afb"
        assert (tmp_path / "xor.afb").is_file()


class TestTargets:
    def test_parse(self):
        assert parse_targets("wasm,onnx") == ("onnx", "wasm")
        assert parse_targets(["onnx"]) == ("onnx",)

    @pytest.mark.parametrize("bad", ["", "onnx,tflite"])
    def test_unknown(self, bad):
        with pytest.raises(UsageError) as info:
            parse_targets(bad)
        assert info.value.code == "AF3004"


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
class TestExamples:
    def test_compiles_and_backends_agree(self, name, example_bundles, wasm_runner):
        bundle = read_bundle(example_bundles[name])
        jsonschema.Draft202012Validator(SCHEMA).validate(bundle.manifest)
        network = bundle.manifest["network"]
        width, out = network["input"]["shape"][1], network["output"]["shape"][1]
        x = np.random.default_rng(5).uniform(-1, 1, (100, width)).astype(np.float32)
        got_onnx = onnx_run(bundle.members["model.onnx"], x)
        got_wasm = wasm_runner(bundle.members["model.wasm"], x, out)
        np.testing.assert_allclose(got_wasm, got_onnx, rtol=1e-5, atol=1e-5)
