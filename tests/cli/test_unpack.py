"""`af unpack`: header.yaml plus one file per section, payloads as stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.numpy
import zstandard
from click.testing import CliRunner

from af.cli import app
from afc.reader import read_container

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"


def invoke(*args: str):
    return CliRunner().invoke(app, ["unpack", *args])


class TestUnpack:
    def test_writes_header_and_sections(self, tmp_path: Path):
        out = tmp_path / "out"
        result = invoke(str(XOR), "-o", str(out))
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == ["header.yaml", "neural_weights.safetensors", "training_data.safetensors"]
        data = XOR.read_bytes()
        assert (out / "header.yaml").read_bytes() == data[: data.index(b"---BINARY_SECTION:")]
        training = safetensors.numpy.load((out / "training_data.safetensors").read_bytes())
        assert np.array_equal(training["inputs"], [[0, 0], [0, 1], [1, 0], [1, 1]])

    def test_other_sections_are_bin_and_json_lists_files(self, tmp_path: Path):
        frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"opaque")
        agent = tmp_path / "a.af"
        agent.write_bytes(b"name: x\n---BINARY_SECTION:notes.v1---\n" + frame + b"\n")
        result = invoke(str(agent), "-o", str(tmp_path / "out"), "--format", "json")
        assert result.exit_code == 0, result.output
        listing = json.loads(result.stdout)
        assert [(e["section"], Path(e["path"]).name, e["bytes"]) for e in listing] == [
            ("header", "header.yaml", 8),
            ("notes.v1", "notes.v1.bin", 6),
        ]
        assert (tmp_path / "out" / "notes.v1.bin").read_bytes() == b"opaque"

    def test_refuses_non_empty_directory_unless_forced(self, tmp_path: Path):
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        refused = invoke(str(XOR), "-o", str(out))
        assert refused.exit_code == 2 and "AF0913" in refused.output
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
        assert invoke(str(XOR), "-o", str(out), "--force").exit_code == 0
        assert (out / "keep.txt").read_text() == "mine" and (out / "header.yaml").exists()

    def test_help_mentions_force(self):
        assert "--force" in CliRunner().invoke(app, ["unpack", "--help"]).output

    def test_broken_container_exits_1_without_writing(self, tmp_path: Path):
        agent = tmp_path / "a.af"
        agent.write_bytes(b"name: x\n---BINARY_SECTION:neural_weights---\n[compressed binary data]\n")
        result = invoke(str(agent), "-o", str(tmp_path / "out"), "--format", "concise")
        assert result.exit_code == 1 and "AF0007" in result.output
        assert not (tmp_path / "out").exists()

    def test_unpack_then_pack_gives_back_the_file(self, tmp_path: Path):
        out = tmp_path / "out"
        assert invoke(str(XOR), "-o", str(out)).exit_code == 0
        agent = tmp_path / "agent.af"
        agent.write_bytes((out / "header.yaml").read_bytes() + b"---BINARY_SECTION:neural_weights---\n[compressed binary data]\n")
        packed = CliRunner().invoke(
            app,
            ["pack", str(agent), "--weights", str(out / "neural_weights.safetensors"),
             "--training-data", str(out / "training_data.safetensors")],
        )
        assert packed.exit_code == 0, packed.output
        assert agent.read_bytes() == XOR.read_bytes()
        assert read_container(agent.read_bytes(), path="a").sha256 == read_container(XOR.read_bytes(), path="x").sha256
