"""`af verify`: exit 0 and the signer's key id, or exit 1 and why (one code per fault)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from af.cli import app
from afcore import signing
from afcore.bundle import assemble_bundle, read_bundle

runner = CliRunner()
XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


def keygen(path: Path) -> str:
    return runner.invoke(app, ["keygen", "--out", str(path)]).stdout.strip()


@pytest.fixture()
def setup(example_bundles, tmp_path: Path) -> dict:
    team, other = tmp_path / "team.key", tmp_path / "other.key"
    team_id, other_id = keygen(team), keygen(other)
    bundle = tmp_path / "xor.afb"
    bundle.write_bytes(example_bundles["xor"].read_bytes())
    unsigned = tmp_path / "unsigned.afb"
    unsigned.write_bytes(bundle.read_bytes())
    assert runner.invoke(app, ["sign", str(bundle), "--key", str(team), "--version", "4"]).exit_code == 0
    return {"bundle": bundle, "unsigned": unsigned, "team": tmp_path / "team.pub", "other": tmp_path / "other.pub",
            "team_key": team, "team_id": team_id, "other_id": other_id, "tmp": tmp_path}


def verify(*args) -> object:
    return runner.invoke(app, ["verify", *map(str, args)])


class TestVerify:
    def test_good_signature(self, setup):
        result = verify(setup["bundle"], "--trust", setup["team"])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == setup["team_id"]
        assert "agent xor-agent" in result.stderr and "version 4" in result.stderr

    def test_json(self, setup):
        result = verify(setup["bundle"], "--trust", setup["other"], "--trust", setup["team"], "--json")
        report = json.loads(result.stdout)
        assert result.exit_code == 0
        assert report["key_id"] == setup["team_id"] and report["version"] == 4 and report["agent"] == "xor-agent"
        assert report["sha256"] == read_bundle(setup["bundle"]).digest

    def test_unsigned(self, setup):
        result = verify(setup["unsigned"], "--trust", setup["team"])
        assert result.exit_code == 1 and "AF4050" in result.stderr and "not signed" in result.stderr

    def test_unknown_key(self, setup):
        result = verify(setup["bundle"], "--trust", setup["other"])
        assert result.exit_code == 1 and "AF4051" in result.stderr and setup["team_id"] in result.stderr

    def test_tampered_member(self, setup):
        bundle = read_bundle(setup["bundle"])
        members = {**bundle.members, "agent.yaml": bundle.members["agent.yaml"].replace(b"xor", b"xox", 1)}
        setup["bundle"].write_bytes(assemble_bundle(bundle.manifest_bytes, members, signature=bundle.signature))
        result = verify(setup["bundle"], "--trust", setup["team"], "--json")
        assert result.exit_code == 1
        [diagnostic] = json.loads(result.stdout)
        assert diagnostic["code"] == "AF4055" and "agent.yaml" in diagnostic["message"]

    def test_tampered_byte(self, setup):
        data = bytearray(setup["bundle"].read_bytes())
        data[len(data) // 3] ^= 0x01
        setup["bundle"].write_bytes(bytes(data))
        result = verify(setup["bundle"], "--trust", setup["team"])
        assert result.exit_code == 1 and "AF40" in result.stderr and "Traceback" not in result.output

    def test_bad_signature(self, setup):
        bundle = read_bundle(setup["bundle"])
        envelope = json.loads(bundle.signature)
        other = signing.load_private_key((setup["tmp"] / "other.key").read_bytes())
        forged = json.loads(signing.sign_manifest(bundle.manifest_bytes, other, version=5))
        envelope["signatures"][0]["sig"] = forged["signatures"][0]["sig"]
        signature = (json.dumps(envelope, sort_keys=True, indent=2) + "\n").encode()
        setup["bundle"].write_bytes(assemble_bundle(bundle.manifest_bytes, bundle.members, signature=signature))
        result = verify(setup["bundle"], "--trust", setup["team"])
        assert result.exit_code == 1 and "AF4052" in result.stderr

    def test_unsupported_format(self, setup):
        bundle = read_bundle(setup["bundle"])
        setup["bundle"].write_bytes(assemble_bundle(bundle.manifest_bytes, bundle.members, signature=b"minisign\n"))
        result = verify(setup["bundle"], "--trust", setup["team"])
        assert result.exit_code == 1 and "AF4054" in result.stderr

    def test_trust_is_required(self, setup):
        result = verify(setup["bundle"])
        assert result.exit_code == 2 and "AF0966" in result.stderr

    def test_a_private_key_is_not_a_trust_anchor(self, setup):
        result = verify(setup["bundle"], "--trust", setup["team_key"])
        assert result.exit_code == 2 and "AF0963" in result.stderr

    def test_missing_key_file(self, setup):
        result = verify(setup["bundle"], "--trust", setup["tmp"] / "nope.pub")
        assert result.exit_code == 2 and "AF0901" in result.stderr

    def test_an_af_file(self, setup):
        result = verify(XOR, "--trust", setup["team"])
        assert result.exit_code == 2 and "AF0904" in result.stderr
