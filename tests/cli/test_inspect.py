"""`af inspect` on the compiled examples and on broken bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from af.cli import app
from afcore.bundle import read_bundle, write_bundle

runner = CliRunner()
XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


class TestInspect:
    @pytest.mark.parametrize("name", ["classification-agent", "xor"])
    def test_shows_each_example(self, example_bundles, name):
        result = runner.invoke(app, ["inspect", str(example_bundles[name])])
        assert result.exit_code == 0, result.output
        manifest = read_bundle(example_bundles[name]).manifest
        text = result.stderr
        assert manifest["agent"]["name"] in text and read_bundle(example_bundles[name]).digest in text
        for layer in manifest["network"]["layers"]:
            assert f"{layer['in']} -> {layer['out']}" in text
        for member in manifest["members"]:
            assert member["name"] in text
        assert "process_neural_network" in text and f"{name}.af:" in text

    def test_json(self, example_bundles):
        path = example_bundles["xor"]
        result = runner.invoke(app, ["inspect", str(path), "--json"])
        assert result.exit_code == 0
        report = json.loads(result.stdout)
        bundle = read_bundle(path)
        assert report["manifest"] == bundle.manifest
        assert report["sha256"] == bundle.digest and report["size"] == path.stat().st_size

    def test_many_members_are_summarised_and_fast(self, example_bundles, tmp_path):
        import time

        from af.cli.inspect import MAX_MEMBER_ROWS

        base = read_bundle(example_bundles["xor"])
        manifest = {k: v for k, v in base.manifest.items() if k != "members"}
        members = {**base.members, **{f"sections/m{k:06d}": b"" for k in range(20_000)}}
        path = tmp_path / "many.afb"
        path.write_bytes(write_bundle(manifest, members))
        started = time.perf_counter()
        result = runner.invoke(app, ["inspect", str(path)])
        elapsed = time.perf_counter() - started
        assert result.exit_code == 0, result.output
        more = len(members) - MAX_MEMBER_ROWS
        assert f"members ({len(members):,})" in result.stderr and f"and {more:,} more" in result.stderr
        assert "m019999" not in result.stderr
        assert elapsed < 5  # 100,000 members: 37-59 s before the table was capped and tar headers parsed by hand, ~2 s now
        assert len(json.loads(runner.invoke(app, ["inspect", str(path), "--json"]).stdout)["manifest"]["members"]) == len(members)

    def test_workflows_in_run_order(self, example_bundles):
        text = runner.invoke(app, ["inspect", str(example_bundles["xor"])]).stderr
        assert text.index("initialization:") < text.index("execution:") < text.index("shutdown:")


class TestBrokenBundles:
    def test_zstd_that_is_not_a_bundle(self, tmp_path):
        import zstandard

        path = tmp_path / "x.afb"
        path.write_bytes(zstandard.ZstdCompressor().compress(b"hello"))
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 1 and "AF400" in result.stderr

    def test_a_text_file_is_said_to_be_one_whatever_its_name(self, tmp_path):
        path = tmp_path / "x.afb"
        path.write_bytes(b"hello")
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 2 and "AF0904" in result.stderr
        assert "is an .af agent file (text)" in result.stderr and "af validate" in result.stderr

    def test_an_agent_file_gets_the_command_that_takes_it(self):
        result = runner.invoke(app, ["inspect", str(XOR)])
        assert result.exit_code == 2 and "AF0904" in result.stderr
        assert "= help: for this file use `af validate`, `af compile` or `af run`" in result.stderr

    def test_json_stays_json_on_failure(self, tmp_path):
        fake = tmp_path / "fake.afb"
        fake.write_bytes(b"\x00\x01 not a bundle")
        result = runner.invoke(app, ["inspect", "--json", str(fake)])
        assert result.exit_code == 2
        [record] = json.loads(result.stdout)
        assert record["code"] == "AF0904" and record["path"] == str(fake) and record["hint"]
        corrupt = tmp_path / "cut.afb"
        corrupt.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 20)
        result = runner.invoke(app, ["inspect", "--json", str(corrupt)])
        assert result.exit_code == 1 and json.loads(result.stdout)[0]["code"].startswith("AF40")

    def test_truncated(self, example_bundles, tmp_path):
        path = tmp_path / "cut.afb"
        path.write_bytes(example_bundles["xor"].read_bytes()[:-50])
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 1 and "AF4002" in result.stderr

    def test_onnx_with_custom_domain(self, example_bundles, tmp_path):
        import onnx

        bundle = read_bundle(example_bundles["xor"])
        model = onnx.ModelProto.FromString(bundle.members["model.onnx"])
        model.opset_import.append(onnx.helper.make_opsetid("com.evil", 1))
        members = {**bundle.members, "model.onnx": model.SerializeToString()}
        manifest = {k: v for k, v in bundle.manifest.items() if k != "members"}
        path = tmp_path / "evil.afb"
        path.write_bytes(write_bundle(manifest, members))
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 1 and "AF4022" in result.stderr

    def test_manifest_breaking_the_schema(self, example_bundles, tmp_path):
        bundle = read_bundle(example_bundles["xor"])
        manifest = {k: v for k, v in bundle.manifest.items() if k != "members"}
        manifest["network"] = {**manifest["network"], "layers": [{"index": 0}]}
        path = tmp_path / "odd.afb"
        path.write_bytes(write_bundle(manifest, dict(bundle.members)))
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 1 and "AF4018" in result.stderr and "network.layers[0]" in result.stderr

    def test_missing_file(self, tmp_path):
        result = runner.invoke(app, ["inspect", str(tmp_path / "none.afb")])
        assert result.exit_code == 2 and "AF0901" in result.stderr and "= help: " in result.stderr
