"""`af run --trust`: only signed bundles run; with --state-dir, never an older signed version."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from af.cli import app
from afcore.bundle import assemble_bundle, read_bundle, write_bundle

runner = CliRunner()
XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


def af(*args, input=None):
    return runner.invoke(app, list(map(str, args)), input=input)


@pytest.fixture()
def signed(example_bundles, tmp_path: Path) -> dict:
    key = tmp_path / "team.key"
    af("keygen", "--out", key)
    af("keygen", "--out", tmp_path / "other.key")
    plain = tmp_path / "plain.afb"
    plain.write_bytes(example_bundles["xor"].read_bytes())
    old, new = tmp_path / "v1.afb", tmp_path / "v2.afb"
    old.write_bytes(plain.read_bytes())
    bundle = read_bundle(plain)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "members"}
    new.write_bytes(write_bundle(manifest, {**bundle.members, "agent.yaml": bundle.members["agent.yaml"] + b"# v2\n"}))
    assert af("sign", old, "--key", key, "--version", 1).exit_code == 0
    assert af("sign", new, "--key", key, "--version", 2).exit_code == 0
    return {"plain": plain, "v1": old, "v2": new, "pub": tmp_path / "team.pub", "other": tmp_path / "other.pub",
            "state": tmp_path / "state"}


class TestRunTrust:
    def test_a_signed_bundle_runs(self, signed):
        result = af("run", signed["v2"], "--trust", signed["pub"], input="[0, 1]\n")
        assert result.exit_code == 0, result.output
        assert "output" in orjson.loads(result.stdout)

    def test_unsigned_is_refused(self, signed):
        result = af("run", signed["plain"], "--trust", signed["pub"], input="[0, 1]\n")
        assert result.exit_code == 1 and "AF4050" in result.stderr and result.stdout == ""

    def test_an_af_file_is_refused(self, signed):
        result = af("run", XOR, "--trust", signed["pub"], input="[0, 1]\n")
        assert result.exit_code == 1 and "AF4050" in result.stderr and ".af file" in result.stderr

    def test_wrong_key_is_refused(self, signed):
        result = af("run", signed["v2"], "--trust", signed["other"], input="[0, 1]\n")
        assert result.exit_code == 1 and "AF4051" in result.stderr

    def test_tampered_member_is_refused(self, signed, tmp_path: Path):
        bundle = read_bundle(signed["v2"])
        members = {**bundle.members, "model.onnx": read_bundle(signed["v1"]).members["model.onnx"] + b"\0"}
        bad = tmp_path / "bad.afb"
        bad.write_bytes(assemble_bundle(bundle.manifest_bytes, members, signature=bundle.signature))
        result = af("run", bad, "--trust", signed["pub"], input="[0, 1]\n")
        assert result.exit_code == 1 and "AF4055" in result.stderr

    def test_rollback_is_refused_with_a_state_dir(self, signed, tmp_path: Path):
        out = tmp_path / "out.jsonl"
        assert af("run", signed["v2"], "--trust", signed["pub"], "--state-dir", signed["state"], input="[0, 1]\n").exit_code == 0
        out.write_text("kept\n")
        result = af("run", signed["v1"], "--trust", signed["pub"], "--state-dir", signed["state"], "-o", out,
                    input="[0, 1]\n")
        assert result.exit_code == 1 and "AF4056" in result.stderr and "rollback" in result.stderr
        assert out.read_text() == "kept\n"  # refused before the output was opened
        # without --state-dir there is nothing to compare with: the older bundle runs
        assert af("run", signed["v1"], "--trust", signed["pub"], input="[0, 1]\n").exit_code == 0

    def test_without_trust_nothing_changes(self, signed):
        assert af("run", signed["plain"], input="[0, 1]\n").exit_code == 0
        assert af("run", signed["v1"], input="[0, 1]\n").exit_code == 0
