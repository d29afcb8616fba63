"""`af pack`: replace or add tensor sections, atomically, refusing to write an invalid file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner

from af.cli import app
from afc.reader import read_container

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"


def invoke(*args: str):
    return CliRunner().invoke(app, ["pack", *args])


def xor_tensors() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    container = read_container(XOR.read_bytes(), path=str(XOR))
    return (
        safetensors.numpy.load(container.section("neural_weights").payload),
        safetensors.numpy.load(container.section("training_data").payload),
    )


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    """xor.af's header followed by the design's placeholder section, as an author would start."""
    data = XOR.read_bytes()
    header = data[: data.index(b"---BINARY_SECTION:")]
    path = tmp_path / "agent.af"
    path.write_bytes(header + b"---BINARY_SECTION:neural_weights---\n[compressed binary data]\n")
    return path


@pytest.fixture
def weight_files(tmp_path: Path) -> tuple[Path, Path]:
    weights, training = xor_tensors()
    w, t = tmp_path / "w.safetensors", tmp_path / "t.safetensors"
    w.write_bytes(safetensors.numpy.save(weights))
    t.write_bytes(safetensors.numpy.save(training))
    return w, t


class TestPack:
    def test_replaces_placeholder_in_place(self, seed_file: Path, weight_files):
        w, t = weight_files
        result = invoke(str(seed_file), "--weights", str(w), "--training-data", str(t))
        assert result.exit_code == 0, result.output
        container = read_container(seed_file.read_bytes(), path=str(seed_file))
        assert [(s.name, s.encoding) for s in container.sections] == [("neural_weights", "base64"), ("training_data", "base64")]
        weights, _ = xor_tensors()
        packed = safetensors.numpy.load(container.section("neural_weights").payload)
        assert all(np.array_equal(packed[k], weights[k]) for k in weights)

    def test_repacking_the_same_tensors_reproduces_the_example(self, seed_file: Path, weight_files):
        w, t = weight_files
        container = read_container(XOR.read_bytes(), path=str(XOR))
        w.write_bytes(container.section("neural_weights").payload)
        t.write_bytes(container.section("training_data").payload)
        assert invoke(str(seed_file), "--weights", str(w), "--training-data", str(t)).exit_code == 0
        assert seed_file.read_bytes() == XOR.read_bytes()

    def test_raw_to_output_keeps_source_and_other_sections(self, tmp_path: Path, weight_files):
        w, _ = weight_files
        out = tmp_path / "out.af"
        result = invoke(str(XOR), "--weights", str(w), "--raw", "-o", str(out), "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["sections"] == ["neural_weights"]
        original = read_container(XOR.read_bytes(), path="x")
        packed = read_container(out.read_bytes(), path="y")
        assert packed.header_text == original.header_text
        assert [(s.name, s.encoding) for s in packed.sections] == [("neural_weights", "raw"), ("training_data", "base64")]
        assert packed.section("training_data").payload == original.section("training_data").payload

    def test_shape_mismatch_is_refused_and_nothing_written(self, seed_file: Path, tmp_path: Path):
        before = seed_file.read_bytes()
        w = tmp_path / "wrong.safetensors"
        w.write_bytes(safetensors.numpy.save({"layers.0.weight": np.ones((3, 3), np.float32)}))
        result = invoke(str(seed_file), "--weights", str(w))
        assert result.exit_code == 1
        assert seed_file.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.af", "wrong.safetensors"]

    def test_not_a_safetensors_file(self, seed_file: Path, tmp_path: Path):
        w = tmp_path / "w.safetensors"
        w.write_bytes(b"PK\x03\x04 a zip, not tensors")
        result = invoke(str(seed_file), "--weights", str(w), "--format", "concise")
        assert result.exit_code == 1
        assert "AF2101" in result.output and "Traceback" not in result.output

    def test_nothing_to_pack_is_a_usage_error(self, seed_file: Path):
        result = invoke(str(seed_file))
        assert result.exit_code == 2 and "AF0912" in result.output

    def test_missing_weights_file_is_a_usage_error(self, seed_file: Path, tmp_path: Path):
        result = invoke(str(seed_file), "--weights", str(tmp_path / "missing.safetensors"))
        assert result.exit_code == 2 and "AF0901" in result.output

    def test_broken_container_is_invalid(self, tmp_path: Path, weight_files):
        w, _ = weight_files
        broken = tmp_path / "broken.af"
        broken.write_bytes(b"name: x\n---BINARY_SECTION:notes---\n@@@\n")
        result = invoke(str(broken), "--weights", str(w), "--format", "concise")
        assert result.exit_code == 1 and "AF0008" in result.output

    def test_output_in_a_missing_directory_is_a_usage_error(self, seed_file: Path, weight_files, tmp_path: Path):
        w, _ = weight_files
        result = invoke(str(seed_file), "--weights", str(w), "-o", str(tmp_path / "no" / "such" / "out.af"))
        assert result.exit_code == 2 and "AF0914" in result.output and "Traceback" not in result.output

    def test_crlf_and_bom_are_kept(self, seed_file: Path, weight_files):
        w, t = weight_files
        seed_file.write_bytes(b"\xef\xbb\xbf" + seed_file.read_bytes().replace(b"\n", b"\r\n"))
        result = invoke(str(seed_file), "--weights", str(w), "--training-data", str(t))
        assert result.exit_code == 0, result.output
        data = seed_file.read_bytes()
        assert data.startswith(b"\xef\xbb\xbf# Agent File Format v1.0\r\n")
        assert data.count(b"\n") == data.count(b"\r\n")


class TestNamedPaths:
    def test_output_naming_a_directory_writes_nothing_into_it(self, seed_file: Path, weight_files, tmp_path):
        out = tmp_path / "dir"
        out.mkdir()
        result = invoke(str(seed_file), "--weights", str(weight_files[0]), "-o", str(out))
        assert result.exit_code == 2 and "AF0905" in result.stderr and list(out.iterdir()) == []

    def test_a_bundle_is_not_packed(self, example_bundles, weight_files):
        result = invoke(str(example_bundles["xor"]), "--weights", str(weight_files[0]))
        assert result.exit_code == 2 and "AF0904" in result.stderr and "compiled bundle" in result.stderr
