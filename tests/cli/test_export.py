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

    def test_an_af_file_is_said_to_be_one(self, tmp_path):
        xor = Path(__file__).resolve().parents[2] / "examples" / "xor.af"
        result = runner.invoke(app, ["export", str(xor), "--onnx", str(tmp_path / "m.onnx")])
        assert result.exit_code == 2 and "AF0904" in result.stderr and "af compile" in result.stderr
