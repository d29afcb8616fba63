"""af/cli/_files.py: the kind of a file told by its first bytes, and the errors about named paths."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from af.cli._files import check_input, check_output, sniff_kind
from afcore.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return buffer.getvalue()


class TestSniffKind:
    @pytest.mark.parametrize("head, kind", [
        (b"", "empty"),
        (b'version: "1.0"\nname: x\n', "agent"),
        (b"\xef\xbb\xbfname: x\r\n", "agent"),  # BOM and CRLF are text
        (b"name: x\n---BINARY_SECTION:neural_weights---\n\x28\xb5\x2f\xfd\x00\x00\x01\x02", "agent"),  # raw section
        (b"name: x\x07y\nversion: 1\n", "agent"),  # a stray control byte: the reader reports it with its line
        (zstandard.ZstdCompressor().compress(b"anything"), "bundle"),
        (_tar(), "tar"),
        ((2).to_bytes(8, "little") + b'{}', "safetensors"),
        ((5000).to_bytes(8, "little") + b'{"layers.0.weight": {"dtype"', "safetensors"),
        (b"\x08\x07\x12\x07pytorch\x1a\x032.0:", "onnx"),
        (b'{\n  "agents": [], "blocks": []\n}', "letta"),
        (bytes(range(256)), "binary"),
    ])
    def test_kinds(self, head, kind):
        assert sniff_kind(head) == kind

    def test_the_examples_are_agent_files(self):
        for path in sorted((ROOT / "examples").glob("*.af")):
            assert sniff_kind(path.read_bytes()[:4096]) == "agent", path


class TestNamedPaths:
    def test_missing(self, tmp_path):
        with pytest.raises(UsageError) as caught:
            check_input(tmp_path / "x.af", ("agent",), "af validate")
        assert caught.value.code == "AF0901" and caught.value.hint and caught.value.exit_code == 2
        assert caught.value.path == str(tmp_path / "x.af")

    def test_directory(self, tmp_path):
        with pytest.raises(UsageError, match="is a directory") as caught:
            check_input(tmp_path, ("bundle",), "af inspect")
        assert caught.value.code == "AF0901"

    def test_wrong_kind_names_the_command_that_takes_it(self, tmp_path):
        path = tmp_path / "w.bin"
        path.write_bytes((2).to_bytes(8, "little") + b'{}')
        with pytest.raises(UsageError) as caught:
            check_input(path, ("agent", "bundle"), "af run")
        assert caught.value.code == "AF0904"
        assert caught.value.message == (f"`{path}` is a safetensors file: `af run` takes an agent file (.af) "
                                        "or a compiled bundle (.afb)")
        assert caught.value.hint == "for this file use `af pack --weights`"

    def test_output_directory_is_refused_and_parents_are_made(self, tmp_path):
        with pytest.raises(UsageError) as caught:
            check_output(tmp_path)
        assert caught.value.code == "AF0905"
        assert check_output(tmp_path / "a" / "b" / "out.jsonl") == tmp_path / "a" / "b" / "out.jsonl"
        assert (tmp_path / "a" / "b").is_dir()
        assert not check_output(tmp_path / "c" / "x", create_parents=False).parent.exists()
