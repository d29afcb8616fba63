"""afc.datasets: the three data file formats, and a diagnostic naming the file (and line) for every fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from afc import load_agent_file
from afc.datasets import load_dataset
from afc.tensors import encode_tensors
from afc.train import train_file
from afc.writer import write_container
from afcore.errors import CheckError, UsageError

ROOT = Path(__file__).resolve().parents[2]
XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_T = np.array([[0], [1], [1], [0]], dtype=np.float32)
#: libfann's own examples/xor.data (FANN's symmetric form: -1 and 1)
FANN_XOR = "4 2 1\n-1 -1\n-1\n-1 1\n1\n1 -1\n1\n1 1\n-1\n"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def failure(path: Path, input_size: int = 2, output_size: int = 1):
    with pytest.raises(CheckError) as info:
        load_dataset(path, input_size=input_size, output_size=output_size)
    return info.value.diagnostics[0]


class TestFormats:
    def test_fann_data_as_libfann_writes_it(self, tmp_path):
        dataset = load_dataset(write(tmp_path, "xor.data", FANN_XOR), input_size=2, output_size=1)
        np.testing.assert_array_equal(dataset.inputs, 2 * XOR_X - 1)
        np.testing.assert_array_equal(dataset.targets, [[-1], [1], [1], [-1]])
        assert dataset.lines == (2, 4, 6, 8) and dataset.inputs.dtype == np.float32

    def test_fann_data_may_put_a_record_on_one_line(self, tmp_path):
        dataset = load_dataset(write(tmp_path, "x.data", "2 2 1\n0 1 1\n1 1 0\n"), input_size=2, output_size=1)
        np.testing.assert_array_equal(dataset.targets, [[1], [0]])
        assert dataset.lines == (2, 3)

    def test_fann_data_on_one_line_as_fscanf_reads_it(self, tmp_path):
        dataset = load_dataset(write(tmp_path, "x.data", FANN_XOR.replace("\n", " ")), input_size=2, output_size=1)
        np.testing.assert_array_equal(dataset.inputs, 2 * XOR_X - 1)
        assert dataset.lines == (1, 1, 1, 1)

    def test_jsonl_with_lists_and_class_indices(self, tmp_path):
        text = '{"input": [0.5, 1], "target": 2}\n\n{"input": [1, 2e-1], "target": [0, 1, 0], "id": "x"}\n'
        dataset = load_dataset(write(tmp_path, "d.jsonl", text), input_size=2, output_size=3)
        np.testing.assert_array_equal(dataset.inputs, np.array([[0.5, 1], [1, 0.2]], dtype=np.float32))
        np.testing.assert_array_equal(dataset.targets, [[0, 0, 1], [0, 1, 0]])
        assert dataset.lines == (1, 3)

    def test_safetensors_with_one_hot_rows_or_class_indices(self, tmp_path):
        one_hot = load_dataset(write(tmp_path, "a.safetensors", encode_tensors({"inputs": XOR_X, "targets": np.eye(2, dtype=np.float32)[[0, 1, 1, 0]]})),
                               input_size=2, output_size=2)
        indices = load_dataset(write(tmp_path, "b.safetensors", encode_tensors({"inputs": XOR_X, "targets": np.array([0, 1, 1, 0], np.float32)})),
                               input_size=2, output_size=2)
        np.testing.assert_array_equal(one_hot.targets, indices.targets)

    def test_the_digest_is_the_files(self, tmp_path):
        import hashlib

        path = write(tmp_path, "xor.data", FANN_XOR)
        assert load_dataset(path, input_size=2, output_size=1).sha256 == hashlib.sha256(FANN_XOR.encode()).hexdigest()

    def test_every_format_trains_to_the_same_weights_as_the_section(self, tmp_path):
        """The same records through each reader give byte-identical weights (same seed)."""
        agent = load_agent_file(ROOT / "examples" / "xor.af")
        rows = [(list(map(float, x)), [float(t[0])]) for x, t in zip(XOR_X, XOR_T)]
        files = {
            "d.jsonl": "".join(f'{{"input": {x}, "target": {t}}}\n' for x, t in rows),
            "d.data": "4 2 1\n" + "".join(f"{x[0]} {x[1]}\n{t[0]}\n" for x, t in rows),
            "d.safetensors": encode_tensors({"inputs": XOR_X, "targets": XOR_T}),
        }
        base = tmp_path / "base.af"
        base.write_bytes(write_container(agent.header_text, [("neural_weights", agent.sections["neural_weights"].payload)]))
        payloads = set()
        for name, content in files.items():
            out = tmp_path / f"{name}.af"
            train_file(base, data=write(tmp_path, name, content), epochs=5, seed=1, output=out)
            payloads.add(load_agent_file(out).sections["neural_weights"].payload)
        section = tmp_path / "section.af"
        train_file(ROOT / "examples" / "xor.af", epochs=5, seed=1, output=section)
        payloads.add(load_agent_file(section).sections["neural_weights"].payload)
        assert len(payloads) == 1


class TestFaultsNameTheFileAndLine:
    def test_unknown_suffix_and_missing_file_are_usage_errors(self, tmp_path):
        for path, code in ((write(tmp_path, "d.csv", "1,2"), "AF6001"), (tmp_path / "missing.jsonl", "AF6000")):
            with pytest.raises(UsageError) as info:
                load_dataset(path, input_size=2, output_size=1)
            assert info.value.code == code and str(path) in info.value.message

    @pytest.mark.parametrize("line, code, column", [
        ('{"input": [0, 0], "target": [0]', "AF6005", None),      # bad JSON
        ('[0, 0]', "AF6005", 1),                                  # not an object
        ('{"target": [0]}', "AF6005", 1),                         # no input
        ('{"input": [0, "1"], "target": [0]}', "AF6006", 1),      # a string
        ('{"input": [0, true], "target": [0]}', "AF6006", 1),     # a boolean is not a number
        ('{"input": [0, 0, 0], "target": [0]}', "AF6006", 1),     # wrong width
        ('{"input": [0, 0], "target": 1}', "AF6006", 1),          # class index out of range for 1 output
        ('{"input": [0, 1e999], "target": [0]}', "AF6005", None),  # out of float range: not JSON to orjson
    ])
    def test_jsonl(self, tmp_path, line, code, column):
        path = write(tmp_path, "d.jsonl", '{"input": [1, 1], "target": [0]}\n' + line + "\n")
        diagnostic = failure(path)
        assert diagnostic.code == code and diagnostic.span.path == str(path) and diagnostic.span.line == 2
        assert column is None or diagnostic.span.column == column
        assert str(path) in diagnostic.message

    def test_jsonl_that_is_not_utf8(self, tmp_path):
        diagnostic = failure(write(tmp_path, "d.jsonl", b'{"input": [1, 1], "target": [0]}\n{"input": "\xff"}\n'))
        assert diagnostic.code == "AF6005" and diagnostic.span.line == 2

    def test_empty_jsonl(self, tmp_path):
        assert failure(write(tmp_path, "d.jsonl", "\n\n")).code == "AF6009"

    def test_fann_bad_number_points_at_the_token(self, tmp_path):
        path = write(tmp_path, "d.data", "2 2 1\n0 1\n1\n1 x1\n0\n")
        diagnostic = failure(path)
        assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("AF6007", 4, 3)
        assert "`x1`" in diagnostic.message

    @pytest.mark.parametrize("text, code, line", [
        ("two 2 1\n0 1\n1\n", "AF6007", 1),   # header not three integers
        ("2 2 1\n0 1\n1\n1 1\n", "AF6007", 4),  # one number short
        ("2 -2 1\n0 1\n1\n", "AF6007", 1),   # not a count
        ("2 2\n", "AF6007", 1),                # header cut short
        ("1 2 1\n0 1\n1\n1\n", "AF6007", 4),    # one too many
        ("1 3 1\n0 1 1\n1\n", "AF6004", 1),     # the network has 2 inputs
        ("1 2 1\n0 nan\n1\n", "AF6008", 2),     # not finite
    ])
    def test_fann_structure(self, tmp_path, text, code, line):
        diagnostic = failure(write(tmp_path, "d.data", text))
        assert (diagnostic.code, diagnostic.span.line) == (code, line)

    def test_safetensors_faults_name_the_file(self, tmp_path):
        cases = {
            "garbage.safetensors": (b"\x01\x02not a safetensors file", "AF2101"),
            "missing.safetensors": (encode_tensors({"inputs": XOR_X}), "AF6003"),
            "extra.safetensors": (encode_tensors({"inputs": XOR_X, "targets": XOR_T, "w": XOR_T}), "AF6003"),
            "shape.safetensors": (encode_tensors({"inputs": XOR_X, "targets": np.zeros((4, 3), np.float32)}), "AF6004"),
            "rows.safetensors": (encode_tensors({"inputs": XOR_X, "targets": XOR_T[:3]}), "AF6004"),
            "dtype.safetensors": (encode_tensors({"inputs": XOR_X.astype(np.int64), "targets": XOR_T}), "AF2102"),
            "nan.safetensors": (encode_tensors({"inputs": XOR_X * np.nan, "targets": XOR_T}), "AF6008"),
        }
        for name, (content, code) in cases.items():
            path = write(tmp_path, name, content)
            diagnostic = failure(path)
            assert diagnostic.code == code, name
            assert str(path) in diagnostic.message, name

    def test_class_indices_out_of_range(self, tmp_path):
        path = write(tmp_path, "c.safetensors", encode_tensors({"inputs": XOR_X, "targets": np.array([0, 1, 2.5, 0], np.float32)}))
        diagnostic = failure(path, output_size=3)
        assert diagnostic.code == "AF6006" and "record 3" in diagnostic.message
