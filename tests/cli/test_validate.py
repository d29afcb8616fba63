"""`af validate`: exit codes, the three formats, --max-section-bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from af.cli import app
from afc.tensors import encode_tensors
from afc.writer import write_container

HEADER = """\
version: "1.0"
name: "cli-agent"
neural_config:
  input_size: 2
  output_size: 1
  hidden_layers: [2]
  activation_function: "relu"
workflows:
  execution:
    - receive_input
    - process_neural_network
    - send_output
"""


def weights(nan: bool = False) -> bytes:
    tensors = {"layers.0.weight": np.ones((2, 2), np.float32), "layers.0.bias": np.zeros(2, np.float32),
               "layers.1.weight": np.ones((1, 2), np.float32), "layers.1.bias": np.zeros(1, np.float32)}
    if nan:
        tensors["layers.1.bias"][0] = np.nan
    return encode_tensors(tensors)


@pytest.fixture
def runner():
    return CliRunner()


def write(tmp_path, header=HEADER, payload=None, name="agent.af"):
    path = tmp_path / name
    path.write_bytes(write_container(header, [("neural_weights", payload or weights())]))
    return path


class TestExitCodes:
    def test_valid_file_exits_0(self, runner, tmp_path):
        result = runner.invoke(app, ["validate", str(write(tmp_path))])
        assert result.exit_code == 0 and "valid" in result.output

    def test_warnings_still_exit_0(self, runner, tmp_path):
        result = runner.invoke(app, ["validate", str(write(tmp_path, payload=weights(nan=True)))])
        assert result.exit_code == 0 and "warning[AF2103]" in result.output and "1 warning" in result.output

    def test_invalid_file_exits_1_with_every_error(self, runner, tmp_path):
        header = HEADER.replace('"relu"', '"rleu"').replace("input_size: 2", "input_size: two")
        result = runner.invoke(app, ["validate", str(write(tmp_path, header))])
        assert result.exit_code == 1
        assert "error[AF1002]" in result.output and "error[AF1004]" in result.output and "2 errors" in result.output
        assert "Traceback" not in result.output

    def test_missing_file_is_a_usage_error(self, runner, tmp_path):
        result = runner.invoke(app, ["validate", str(tmp_path / "nope.af")])
        assert result.exit_code == 2 and "AF0901" in result.output

    def test_bad_format_is_a_usage_error(self, runner, tmp_path):
        assert runner.invoke(app, ["validate", str(write(tmp_path)), "--format", "xml"]).exit_code == 2


class TestFormats:
    def test_full_has_source_frame_and_caret(self, runner, tmp_path):
        path = write(tmp_path, HEADER.replace("- send_output", "- send_outptu"))
        result = runner.invoke(app, ["validate", str(path)])
        assert f" --> {path}:12:7" in result.output
        assert "12 |     - send_outptu\n" in result.output
        assert "   |       ^^^^^^^^^^^ not a known step" in result.output
        assert "= help: did you mean `send_output`?" in result.output

    def test_concise(self, runner, tmp_path):
        path = write(tmp_path, HEADER.replace("- send_output", "- send_outptu"))
        result = runner.invoke(app, ["validate", str(path), "--format", "concise"])
        assert f"{path}:12:7: AF2020 unknown step `send_outptu`" in result.output

    def test_json_on_stdout(self, tmp_path):
        path = write(tmp_path, HEADER.replace('"relu"', '"rleu"'))
        result = CliRunner().invoke(app, ["validate", str(path), "--format", "json"])
        assert result.exit_code == 1
        records = json.loads(result.stdout)
        assert records == [{"code": "AF1004", "severity": "error",
                            "message": "`neural_config.activation_function` must be one of `relu`, `leaky_relu`, "
                                       "`sigmoid`, `tanh`, `linear`, `elu`, `gelu`, `softplus`",
                            "path": str(path), "line": 7, "column": 24, "hint": "did you mean `relu`?"}]

    def test_json_of_a_valid_file_is_an_empty_list(self, tmp_path):
        result = CliRunner().invoke(app, ["validate", str(write(tmp_path)), "--format", "json"])
        assert result.exit_code == 0 and json.loads(result.stdout) == []


class TestMaxSectionBytes:
    def test_small_cap_refuses_the_section(self, runner, tmp_path):
        result = runner.invoke(app, ["validate", str(write(tmp_path)), "--max-section-bytes", "16",
                                     "--format", "concise"])
        assert result.exit_code == 1 and "AF0016" in result.output

    def test_cap_must_be_positive(self, runner, tmp_path):
        assert runner.invoke(app, ["validate", str(write(tmp_path)), "--max-section-bytes", "0"]).exit_code == 2


class TestSeveralFiles:
    def test_every_file_is_checked_and_any_invalid_exits_1(self, runner, tmp_path):
        good = write(tmp_path, name="good.af")
        bad = write(tmp_path, HEADER.replace('"relu"', '"rleu"'), name="bad.af")
        result = runner.invoke(app, ["validate", str(good), str(bad), str(good)])
        assert result.exit_code == 1
        assert result.stderr.count(f"{good}: valid") == 2 and f"{bad}: 1 error" in result.stderr

    def test_all_valid_exits_0(self, runner, tmp_path):
        good = write(tmp_path, name="good.af")
        assert runner.invoke(app, ["validate", str(good), str(good)]).exit_code == 0

    def test_json_is_one_list_for_every_file(self, tmp_path):
        bad = write(tmp_path, HEADER.replace('"relu"', '"rleu"'), name="bad.af")
        missing = tmp_path / "missing.af"
        result = CliRunner().invoke(app, ["validate", str(bad), str(missing), "--format", "json"])
        assert result.exit_code == 2  # the usage error (a file that cannot be read) wins over invalid
        records = json.loads(result.stdout)
        assert [(r["code"], r["path"]) for r in records] == [("AF1004", str(bad)), ("AF0901", str(missing))]
        assert records[1]["hint"] == "check the path and its permissions"

    def test_no_path_is_a_usage_error(self, runner):
        result = runner.invoke(app, ["validate"])
        assert result.exit_code == 2 and "Missing argument 'PATH...'" in result.output


class TestFileKinds:
    def test_a_bundle_is_said_to_be_one(self, runner, example_bundles):
        result = runner.invoke(app, ["validate", str(example_bundles["xor"])])
        assert result.exit_code == 2 and "AF0904" in result.stderr
        assert "is a compiled bundle" in result.stderr and "af inspect" in result.stderr
        assert "\ufffd" not in result.stderr  # no binary bytes in a source frame

    def test_a_directory_is_a_usage_error_with_help(self, runner, tmp_path):
        result = runner.invoke(app, ["validate", str(tmp_path)])
        assert result.exit_code == 2 and "AF0901" in result.stderr and "is a directory" in result.stderr
        assert "= help: " in result.stderr and "Invalid value" not in result.output

    def test_missing_file_in_json_names_its_path(self, tmp_path):
        missing = tmp_path / "missing.af"
        result = CliRunner().invoke(app, ["validate", str(missing), "--format", "json"])
        assert result.exit_code == 2
        [record] = json.loads(result.stdout)
        assert record["code"] == "AF0901" and record["path"] == str(missing)

    def test_an_extension_decides_nothing(self, runner, tmp_path):
        path = write(tmp_path, name="AGENT.TXT")
        assert runner.invoke(app, ["validate", str(path)]).exit_code == 0

    @pytest.mark.parametrize("content, said", [
        (b'{"agents": [{"name": "helper"}], "blocks": [], "tools": [], "mcp_servers": []}', "a Letta agent file"),
        ((12).to_bytes(8, "little") + b'{"x": "y"}  ', "a safetensors file"),
        (b"\x08\x0a\x12\x02af\x1a\x050.1.0:\x80", "an ONNX model"),
        (b"\x00\x01\x02\x03binary", "a binary file"),
    ])
    def test_other_kinds_are_named_in_one_diagnostic(self, runner, tmp_path, content, said):
        path = tmp_path / "agent.af"
        path.write_bytes(content)
        result = runner.invoke(app, ["validate", str(path), "--format", "json"])
        assert result.exit_code == 2
        [record] = json.loads(result.stdout)
        assert record["code"] == "AF0904" and said in record["message"] and record["hint"]
