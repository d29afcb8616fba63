"""`af compile` through the CLI: default output, targets, summary, --emit, invalid sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from af.cli import app
from afcore.bundle import read_bundle

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"
runner = CliRunner()


@pytest.fixture
def xor(tmp_path: Path) -> Path:
    path = tmp_path / "xor.af"
    shutil.copy(XOR, path)
    return path


class TestCompile:
    def test_writes_the_bundle_beside_the_source(self, xor):
        result = runner.invoke(app, ["compile", str(xor)])
        assert result.exit_code == 0, result.output
        bundle = read_bundle(xor.with_suffix(".afb"))
        assert bundle.manifest["targets"] == ["onnx", "wasm"]
        assert "sha256" in result.stderr and "model.onnx" in result.stderr and "total" in result.stderr

    def test_output_and_target(self, xor, tmp_path):
        out = tmp_path / "out" / "agent.afb"
        out.parent.mkdir()
        result = runner.invoke(app, ["compile", str(xor), "-o", str(out), "--target", "onnx"])
        assert result.exit_code == 0, result.output
        assert sorted(read_bundle(out).members) == [
            "agent.yaml", "model.onnx", "training_data.safetensors", "weights.safetensors"]

    def test_json_summary(self, xor):
        result = runner.invoke(app, ["compile", str(xor), "--json"])
        assert result.exit_code == 0
        summary = json.loads(result.stdout)
        data = xor.with_suffix(".afb").read_bytes()
        assert summary["size"] == len(data) and summary["sha256"] == read_bundle(data).digest
        assert summary["parameters"] == 17 and [m["name"] for m in summary["members"]][0] == "agent.yaml"

    def test_no_temporary_files_are_left(self, xor):
        runner.invoke(app, ["compile", str(xor)])
        assert sorted(p.name for p in xor.parent.iterdir()) == ["xor.af", "xor.afb"]

    def test_unknown_target_is_a_usage_error(self, xor):
        result = runner.invoke(app, ["compile", str(xor), "--target", "tflite"])
        assert result.exit_code == 2 and "AF3004" in result.stderr

    def test_missing_output_directories_are_created(self, xor, tmp_path):
        out = tmp_path / "build" / "deeper" / "a.afb"
        assert runner.invoke(app, ["compile", str(xor), "-o", str(out)]).exit_code == 0
        assert read_bundle(out).manifest["agent"]["name"] == "xor-agent"

    def test_unwritable_output(self, xor, tmp_path):
        (tmp_path / "a-file").write_text("")
        result = runner.invoke(app, ["compile", str(xor), "-o", str(tmp_path / "a-file" / "a.afb")])
        assert result.exit_code == 1 and "AF3006" in result.stderr


class TestEmit:
    def test_spec(self, xor):
        result = runner.invoke(app, ["compile", str(xor), "--emit", "spec"])
        assert result.exit_code == 0
        assert json.loads(result.stdout)["network"]["parameters"] == 17
        assert not xor.with_suffix(".afb").exists()

    def test_onnx_text(self, xor):
        result = runner.invoke(app, ["compile", str(xor), "--emit", "onnx"])
        assert result.exit_code == 0
        assert '["layers.0.gemm"]' in result.stdout and "# initializer layers.0.weight: float32[4, 2]" in result.stdout

    def test_wat(self, xor):
        result = runner.invoke(app, ["compile", str(xor), "--emit", "wat"])
        assert result.exit_code == 0 and "(module" in result.stdout

    def test_unknown_form(self, xor):
        assert runner.invoke(app, ["compile", str(xor), "--emit", "llvm"]).exit_code == 2


class TestInvalidSource:
    def test_same_diagnostics_as_validate(self, tmp_path):
        bad = tmp_path / "bad.af"
        bad.write_text('version: "1.0"\nname: x\n')
        compiled = runner.invoke(app, ["compile", str(bad), "--format", "json"])
        validated = runner.invoke(app, ["validate", str(bad), "--format", "json"])
        assert compiled.exit_code == 1 and validated.exit_code == 1
        assert json.loads(compiled.stdout) == json.loads(validated.stdout)
        assert not (tmp_path / "bad.afb").exists()

    def test_json_summary_flag_gives_json_diagnostics(self, tmp_path):
        bad = tmp_path / "bad.af"
        bad.write_text('version: "1.0"\nname: x\n')
        result = runner.invoke(app, ["compile", str(bad), "--json"])
        assert result.exit_code == 1
        assert {d["code"] for d in json.loads(result.stdout)} == {"AF1001"}

    def test_full_diagnostics_have_a_source_frame(self, tmp_path):
        bad = tmp_path / "bad.af"
        bad.write_text('version: "1.0"\nname: x\n')
        result = runner.invoke(app, ["compile", str(bad)])
        assert result.exit_code == 1 and "error[AF1001]" in result.stderr and "--> " in result.stderr

    def test_missing_file(self, tmp_path):
        result = runner.invoke(app, ["compile", str(tmp_path / "nope.af")])
        assert result.exit_code in (1, 2) and "AF0901" in result.stderr


class TestOutputsAndQuiet:
    def test_quiet_prints_nothing_on_success(self, xor):
        result = runner.invoke(app, ["compile", str(xor), "--quiet"])
        assert result.exit_code == 0 and result.output == ""
        assert xor.with_suffix(".afb").exists()

    def test_quiet_still_reports_errors(self, tmp_path):
        bad = tmp_path / "bad.af"
        bad.write_text('version: "1.0"\nname: x\n')
        result = runner.invoke(app, ["compile", str(bad), "-q"])
        assert result.exit_code == 1 and "AF1001" in result.stderr

    def test_output_naming_a_directory_writes_nothing_into_it(self, xor, tmp_path):
        out = tmp_path / "dir"
        out.mkdir()
        result = runner.invoke(app, ["compile", str(xor), "-o", str(out)])
        assert result.exit_code == 2 and "AF0905" in result.stderr and "= help: " in result.stderr
        assert list(out.iterdir()) == []

    def test_a_bundle_given_as_source_is_said_to_be_one(self, example_bundles):
        result = runner.invoke(app, ["compile", str(example_bundles["xor"])])
        assert result.exit_code == 2 and "AF0904" in result.stderr and "compiled bundle" in result.stderr
