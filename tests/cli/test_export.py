"""`af export`: the exported model is the bundle's, and loads in other tools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner

import afc
from af.cli import app
from afc.compile import compile_agent
from afcore.bundle import read_bundle

runner = CliRunner()


class TestExport:
    def test_onnx(self, example_bundles, tmp_path):
        out = tmp_path / "model.onnx"
        result = runner.invoke(app, ["export", str(example_bundles["classification-agent"]), "--onnx", str(out)])
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == read_bundle(example_bundles["classification-agent"]).members["model.onnx"]
        onnx.checker.check_model(str(out), full_check=True)
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert session.run(None, {"input": np.zeros((3, 784), np.float32)})[0].shape == (3, 10)

    def test_wasm(self, example_bundles, tmp_path):
        out = tmp_path / "model.wasm"
        result = runner.invoke(app, ["export", str(example_bundles["xor"]), "--wasm", str(out)])
        assert result.exit_code == 0
        assert out.read_bytes()[:4] == b"\0asm"

    def test_nothing_to_export(self, example_bundles):
        result = runner.invoke(app, ["export", str(example_bundles["xor"])])
        assert result.exit_code == 2 and "AF3009" in result.stderr

    def test_bundle_without_the_target(self, tmp_path):
        spec = afc.load_agent_file(Path(__file__).parents[2] / "examples" / "xor.af").spec()
        path = tmp_path / "onnx-only.afb"
        path.write_bytes(compile_agent(spec, targets=("onnx",)))
        result = runner.invoke(app, ["export", str(path), "--wasm", str(tmp_path / "m.wasm")])
        assert result.exit_code == 1 and "AF4017" in result.stderr
        assert not (tmp_path / "m.wasm").exists()

    def test_unwritable_destination(self, example_bundles, tmp_path):
        out = tmp_path / "no" / "such" / "dir" / "model.onnx"
        result = runner.invoke(app, ["export", str(example_bundles["xor"]), "--onnx", str(out)])
        assert result.exit_code == 2 and "AF3010" in result.stderr


class TestNamedPaths:
    def test_destination_naming_a_directory_writes_nothing_into_it(self, example_bundles, tmp_path):
        result = runner.invoke(app, ["export", str(example_bundles["xor"]), "--onnx", str(tmp_path)])
        assert result.exit_code == 2 and "AF0905" in result.stderr and list(tmp_path.iterdir()) == []

    def test_missing_bundle_is_af0901_with_help(self, tmp_path):
        result = runner.invoke(app, ["export", str(tmp_path / "nope.afb"), "--onnx", str(tmp_path / "m.onnx")])
        assert result.exit_code == 2 and "AF0901" in result.stderr and "= help: " in result.stderr

    def test_a_file_of_another_kind_is_said_to_be_one(self, tmp_path):
        weights = tmp_path / "w.safetensors"
        weights.write_bytes(afc.encode_tensors({"x": np.zeros(2, np.float32)}))
        result = runner.invoke(app, ["export", str(weights), "--onnx", str(tmp_path / "m.onnx")])
        assert result.exit_code == 2 and "AF0904" in result.stderr


XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


class TestFromAnAfFile:
    """`af export` of an .af compiles in memory and writes what the bundle of `af compile` holds."""

    def test_onnx_and_wasm_are_the_bundles(self, example_bundles, tmp_path):
        onnx_out, wasm_out = tmp_path / "m.onnx", tmp_path / "m.wasm"
        result = runner.invoke(app, ["export", str(XOR), "--onnx", str(onnx_out), "--wasm", str(wasm_out)])
        assert result.exit_code == 0, result.output
        members = read_bundle(example_bundles["xor"]).members
        assert onnx_out.read_bytes() == members["model.onnx"]
        assert wasm_out.read_bytes() == members["model.wasm"]
        assert len(list(tmp_path.iterdir())) == 2  # nothing else, no bundle

    def test_safetensors_from_af_and_bundle_hold_the_weights(self, example_bundles, tmp_path):
        from safetensors.numpy import load_file

        a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
        assert runner.invoke(app, ["export", str(XOR), "--safetensors", str(a)]).exit_code == 0
        assert runner.invoke(app, ["export", str(example_bundles["xor"]), "--safetensors", str(b)]).exit_code == 0
        weights = afc.load_agent_file(XOR).weights
        for path in (a, b):
            loaded = load_file(str(path))
            assert sorted(loaded) == sorted(weights)
            for name, array in weights.items():
                np.testing.assert_array_equal(loaded[name], array)

    def test_fann_from_af_and_bundle_are_the_same_file(self, example_bundles, tmp_path):
        a, b = tmp_path / "a.net", tmp_path / "b.net"
        assert runner.invoke(app, ["export", str(XOR), "--fann", str(a)]).exit_code == 0
        assert runner.invoke(app, ["export", str(example_bundles["xor"]), "--fann", str(b)]).exit_code == 0
        assert a.read_text().startswith("FANN_FLO_2.1\n") and a.read_bytes() == b.read_bytes()

    def test_fann_of_a_relu_network_is_refused_and_nothing_written(self, example_bundles, tmp_path):
        out = tmp_path / "c.net"
        result = runner.invoke(app, ["export", str(example_bundles["classification-agent"]), "--fann", str(out)])
        assert result.exit_code == 1 and "AF6065" in result.stderr and "relu" in result.stderr
        assert not out.exists()

    def test_an_invalid_af_file_reports_its_diagnostics(self, tmp_path):
        bad = tmp_path / "bad.af"
        bad.write_text(XOR.read_text(encoding="utf-8").split("---BINARY_SECTION")[0])
        result = runner.invoke(app, ["export", str(bad), "--onnx", str(tmp_path / "m.onnx")])
        assert result.exit_code == 1 and "AF2001" in result.stderr and not (tmp_path / "m.onnx").exists()
