"""`af import`: a model file becomes a valid .af file; what cannot be mapped is a diagnostic, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import afc
from af.cli import app
from afc.fann import write_fann

runner = CliRunner()
XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


def xor_net(tmp_path: Path) -> Path:
    path = tmp_path / "xor model.net"
    path.write_text(write_fann(afc.load_agent_file(XOR).spec().network))
    return path


class TestImport:
    def test_fann_file_becomes_a_valid_af_with_the_same_weights(self, tmp_path):
        out = tmp_path / "out" / "xor.af"
        result = runner.invoke(app, ["import", str(xor_net(tmp_path)), "-o", str(out)])
        assert result.exit_code == 0, result.output
        agent = afc.load_agent_file(out)
        assert agent.header["name"] == "xor-model" and agent.diagnostics == []
        for name, array in afc.load_agent_file(XOR).weights.items():
            np.testing.assert_array_equal(agent.weights[name], array)

    def test_the_imported_file_runs(self, tmp_path):
        import orjson

        out = tmp_path / "xor.af"
        assert runner.invoke(app, ["import", str(xor_net(tmp_path)), "-o", str(out)]).exit_code == 0
        result = runner.invoke(app, ["run", str(out)], input="[0, 1]\n[1, 1]\n")
        assert result.exit_code == 0, result.stderr
        outputs = [orjson.loads(line)["output"] for line in result.stdout_bytes.splitlines()]
        source = runner.invoke(app, ["run", str(XOR)], input="[0, 1]\n[1, 1]\n")
        assert outputs == [orjson.loads(line)["output"] for line in source.stdout_bytes.splitlines()]

    def test_onnx_model_with_scaler_and_classes(self, tmp_path):
        import warnings

        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        skl2onnx = pytest.importorskip("skl2onnx")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(60, 3)).astype(np.float32) * 5 + 2
        y = np.where(x[:, 0] > 2, "high", "low")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = make_pipeline(StandardScaler(), MLPClassifier((4,), max_iter=50, random_state=0)).fit(x, y)
            model = skl2onnx.to_onnx(pipe, x[:1], options={id(pipe.steps[-1][1]): {"zipmap": False}})
        source = tmp_path / "sk.onnx"
        source.write_bytes(model.SerializeToString())
        out = tmp_path / "sk.af"
        result = runner.invoke(app, ["import", str(source), "-o", str(out)])
        assert result.exit_code == 0, result.output
        config = afc.load_agent_file(out).header["neural_config"]
        assert config["labels"] == ["high", "low"] and config["output_activation"] == "sigmoid"
        np.testing.assert_allclose(config["input_normalization"]["mean"], pipe.steps[0][1].mean_, rtol=1e-6)

    def test_name_option(self, tmp_path):
        out = tmp_path / "x.af"
        assert runner.invoke(app, ["import", str(xor_net(tmp_path)), "-o", str(out), "--name", "gate"]).exit_code == 0
        assert afc.load_agent_file(out).header["name"] == "gate"

    def test_bad_name(self, tmp_path):
        result = runner.invoke(app, ["import", str(xor_net(tmp_path)), "-o", str(tmp_path / "x.af"), "--name", "-x"])
        assert result.exit_code == 2 and "AF6052" in result.stderr

    def test_existing_output_needs_force(self, tmp_path):
        out = tmp_path / "x.af"
        out.write_text("keep")
        result = runner.invoke(app, ["import", str(xor_net(tmp_path)), "-o", str(out)])
        assert result.exit_code == 2 and "AF0902" in result.stderr and out.read_text() == "keep"
        assert runner.invoke(app, ["import", str(xor_net(tmp_path)), "-o", str(out), "--force"]).exit_code == 0

    def test_a_file_that_is_no_model(self, tmp_path):
        junk = tmp_path / "junk.onnx"
        junk.write_bytes(b"\xff\xff\xff not protobuf")
        result = runner.invoke(app, ["import", str(junk), "-o", str(tmp_path / "x.af")])
        assert result.exit_code == 1 and "AF6051" in result.stderr and "Traceback" not in result.output
        assert not (tmp_path / "x.af").exists()

    def test_a_missing_file(self, tmp_path):
        result = runner.invoke(app, ["import", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "x.af")])
        assert result.exit_code == 2 and "AF0901" in result.stderr

    def test_a_malformed_fann_file(self, tmp_path):
        bad = tmp_path / "bad.net"
        bad.write_text("FANN_FLO_2.1\nnetwork_type=1\n")
        result = runner.invoke(app, ["import", str(bad), "-o", str(tmp_path / "x.af")])
        assert result.exit_code == 1 and "AF6060" in result.stderr
