"""afcore.sniff: files that are plainly not af agent files are named by their content (issue 9, Letta)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import afc
from afcore.sniff import identify_foreign

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "corpus" / "bad"


class TestKinds:
    @pytest.mark.parametrize(("case", "kind"), [
        ("not-af-letta", "letta"), ("not-af-letta-first-format", "letta"), ("not-af-bundle", "bundle"),
        ("not-af-zstd", "zstd"), ("not-af-onnx", "onnx"), ("not-af-safetensors", "safetensors"),
        ("not-af-json", "json"), ("not-af-gzip", "binary"),
    ])
    def test_kind(self, case, kind):
        assert identify_foreign((BAD / f"{case}.af").read_bytes()).kind == kind

    def test_letta_file_is_one_diagnostic_with_a_hint(self):
        (diag,) = afc.validate(BAD / "not-af-letta.af")
        assert diag.code == "AF0023" and "Letta" in diag.message and "Letta" in diag.help
        assert (diag.span.line, diag.span.column) == (1, 1)

    @pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.af")), ids=lambda p: p.name)
    def test_af_files_are_not_foreign(self, example):
        data = example.read_bytes()
        assert identify_foreign(data) is None
        assert identify_foreign(b"\xef\xbb\xbf" + data) is None

    def test_header_written_as_json_is_left_to_the_schema(self):
        header = {"version": "1.0", "name": "j", "neural_config": {}, "workflows": {"execution": []}}
        assert identify_foreign(json.dumps(header).encode()) is None
        assert identify_foreign(b'{"version": "1.0", "name": "j"}') is None  # incomplete: the schema says what lacks

    @pytest.mark.parametrize("text", [b"{version: '1.0', name: x}", b"{", b"[1, 2]", b"", b"name: x\n", b"{" * 100000])
    def test_other_text_is_left_to_yaml(self, text):
        assert identify_foreign(text) is None
