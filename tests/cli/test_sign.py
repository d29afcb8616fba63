"""`af sign`: adds a signature with a version that only grows; the bundle is verified first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from af.cli import app
from afcore import signing
from afcore.bundle import read_bundle

runner = CliRunner()
XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


@pytest.fixture()
def key(tmp_path: Path) -> Path:
    path = tmp_path / "team.key"
    assert runner.invoke(app, ["keygen", "--out", str(path)]).exit_code == 0
    return path


@pytest.fixture()
def bundle(example_bundles, tmp_path: Path) -> Path:
    path = tmp_path / "xor.afb"
    path.write_bytes(example_bundles["xor"].read_bytes())
    return path


def public(key: Path) -> signing.PublicKey:
    return signing.load_public_key(key.with_suffix(".pub").read_bytes())


class TestSign:
    def test_signs_in_place(self, bundle: Path, key: Path):
        members = read_bundle(bundle).members
        result = runner.invoke(app, ["sign", str(bundle), "--key", str(key)])
        assert result.exit_code == 0, result.output
        signed = signing.read_signed_bundle(bundle, [public(key)])
        assert signed.verified.version == 1 and signed.members == members
        assert f"key {signed.verified.key_id}, version 1" in result.stderr

    def test_versions_grow_by_default(self, bundle: Path, key: Path, tmp_path: Path):
        other = tmp_path / "other.afb"
        other.write_bytes(bundle.read_bytes())
        runner.invoke(app, ["sign", str(bundle), "--key", str(key)])
        runner.invoke(app, ["sign", str(bundle), "--key", str(key)])  # the bundle's own: 2
        result = runner.invoke(app, ["sign", str(other), "--key", str(key), "--json"])  # the key's counter: 3
        assert json.loads(result.stdout)["version"] == 3
        assert (tmp_path / "team.key.counter").read_text() == "3\n"
        assert signing.read_signed_bundle(bundle, [public(key)]).verified.version == 2

    def test_explicit_version_and_output(self, bundle: Path, key: Path, tmp_path: Path):
        out = tmp_path / "out" / "signed.afb"
        before = bundle.read_bytes()
        result = runner.invoke(app, ["sign", str(bundle), "-k", str(key), "--version", "41", "-o", str(out), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["version"] == 41 and report["key_id"] == public(key).key_id
        assert bundle.read_bytes() == before
        assert signing.read_signed_bundle(out, [public(key)]).verified.version == 41
        # the counter follows the highest version signed
        assert runner.invoke(app, ["sign", str(bundle), "-k", str(key), "--json"]).stdout.count('"version": 42') == 1

    def test_encrypted_key(self, bundle: Path, tmp_path: Path):
        key = tmp_path / "enc.key"
        env = {"AF_SIGNING_PASSPHRASE": "pw"}
        runner.invoke(app, ["keygen", "--out", str(key)], env=env)
        assert runner.invoke(app, ["sign", str(bundle), "--key", str(key)], env=env).exit_code == 0
        result = runner.invoke(app, ["sign", str(bundle), "--key", str(key)], env={"AF_SIGNING_PASSPHRASE": ""})
        assert result.exit_code == 2 and "AF0962" in result.stderr and "passphrase" in result.stderr

    def test_a_public_key_cannot_sign(self, bundle: Path, key: Path):
        result = runner.invoke(app, ["sign", str(bundle), "--key", str(key.with_suffix(".pub"))])
        assert result.exit_code == 2 and "AF0962" in result.stderr

    def test_a_corrupt_bundle_is_not_signed(self, bundle: Path, key: Path):
        data = bytearray(bundle.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bundle.write_bytes(bytes(data))
        result = runner.invoke(app, ["sign", str(bundle), "--key", str(key)])
        assert result.exit_code == 1 and "AF400" in result.stderr and "Traceback" not in result.output
        assert bytes(data) == bundle.read_bytes()

    def test_an_af_file_is_not_a_bundle(self, key: Path):
        result = runner.invoke(app, ["sign", str(XOR), "--key", str(key)])
        assert result.exit_code == 2 and "AF0904" in result.stderr

    def test_a_bad_counter_is_a_usage_error(self, bundle: Path, key: Path, tmp_path: Path):
        (tmp_path / "team.key.counter").write_text("many")
        result = runner.invoke(app, ["sign", str(bundle), "--key", str(key)])
        assert result.exit_code == 2 and "AF0965" in result.stderr
        assert runner.invoke(app, ["sign", str(bundle), "--key", str(key), "--version", "3"]).exit_code == 2

    @pytest.mark.parametrize("version", ["0", "-3", str(1 << 53), "x"])
    def test_version_out_of_range(self, bundle: Path, key: Path, version: str):
        result = runner.invoke(app, ["sign", str(bundle), "--key", str(key), "--version", version])
        assert result.exit_code == 2 and "Traceback" not in result.output


def test_the_version_bound_is_the_libraries():
    from af.cli.sign import MAX_VERSION

    assert MAX_VERSION == signing.MAX_VERSION
