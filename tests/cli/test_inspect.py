"""`af inspect` on the compiled examples and on broken bundles."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from af.cli import app
from afcore.bundle import read_bundle, write_bundle

runner = CliRunner()


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
    def test_not_a_bundle(self, tmp_path):
        path = tmp_path / "x.afb"
        path.write_bytes(b"hello")
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 1 and "AF4001" in result.stderr

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
        assert result.exit_code == 1 and "AF4015" in result.stderr
