"""afc's public API as the `af` command uses it: `afc.pack` and `afc.compile_spec`, without the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.numpy

import afc
from afc.reader import read_container
from afcore.bundle import read_bundle
from afcore.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"


class TestPack:
    def test_replaces_a_section_in_place_and_keeps_the_rest(self, tmp_path):
        container = read_container(XOR.read_bytes(), path=str(XOR))
        weights = safetensors.numpy.load(container.section("neural_weights").payload)
        source = tmp_path / "xor.af"
        source.write_bytes(XOR.read_bytes())
        new = tmp_path / "w.safetensors"
        new.write_bytes(safetensors.numpy.save({k: v * 2 for k, v in weights.items()}))
        result = afc.pack(source, weights=new, output=tmp_path / "out.af")
        assert result.sections == ("neural_weights",) and result.path == tmp_path / "out.af"
        packed = read_container(result.path.read_bytes(), path=str(result.path))
        assert [s.name for s in packed.sections] == [s.name for s in container.sections]
        assert packed.header_text == container.header_text
        assert result.to_json()["bytes"] == result.path.stat().st_size == result.size

    def test_nothing_to_pack(self, tmp_path):
        with pytest.raises(UsageError) as info:
            afc.pack(XOR)
        assert info.value.code == "AF0912"

    def test_the_module_does_not_shadow_the_function(self):
        import afc.packer  # noqa: F401  (importing the module must leave afc.pack the function)

        assert callable(afc.pack) and afc.pack is afc.packer.pack


class TestCompileSpec:
    def test_result_describes_the_bundle_written(self, tmp_path):
        spec = afc.load_agent_file(XOR).spec()
        result = afc.compile_spec(spec, output=tmp_path / "x.afb", targets=("onnx",))
        bundle = read_bundle(result.path)
        assert result.targets == ("onnx",) and result.sha256 == bundle.digest
        assert result.member_sizes == {m["name"]: m["size"] for m in bundle.manifest["members"]}
        assert result.to_json()["layers"] == bundle.manifest["network"]["layers"]

    def test_emit_forms(self):
        spec = afc.load_agent_file(XOR).spec()
        assert '"format": "afb"' in afc.emit_intermediate(spec, "spec")
        assert "(module" in afc.emit_intermediate(spec, "wat")
        with pytest.raises(UsageError):
            afc.emit_intermediate(spec, "llvm")
