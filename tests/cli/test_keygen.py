"""`af keygen`: an Ed25519 key pair, the private half 0600, never overwritten without --force."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from af.cli import app
from afcore import signing

runner = CliRunner()


class TestKeygen:
    def test_writes_a_pair_and_prints_the_key_id(self, tmp_path: Path):
        result = runner.invoke(app, ["keygen", "--out", str(tmp_path / "team.key")])
        assert result.exit_code == 0, result.output
        private = signing.load_private_key((tmp_path / "team.key").read_bytes())
        public = signing.load_public_key((tmp_path / "team.pub").read_bytes())
        assert private.public_key == public
        assert result.stdout.strip() == public.key_id
        assert stat.S_IMODE((tmp_path / "team.key").stat().st_mode) == 0o600
        assert b"PRIVATE KEY" in (tmp_path / "team.key").read_bytes()
        assert "mode 0600" in result.stderr

    def test_a_name_without_key_suffix_gets_pub_appended(self, tmp_path: Path):
        assert runner.invoke(app, ["keygen", "-o", str(tmp_path / "ci")]).exit_code == 0
        assert (tmp_path / "ci.pub").exists()

    def test_refuses_to_overwrite(self, tmp_path: Path):
        key = tmp_path / "team.key"
        runner.invoke(app, ["keygen", "--out", str(key)])
        before = key.read_bytes()
        result = runner.invoke(app, ["keygen", "--out", str(key)])
        assert result.exit_code == 2 and "AF0960" in result.stderr and "--force" in result.stderr
        assert key.read_bytes() == before

    def test_refuses_when_only_the_pub_exists(self, tmp_path: Path):
        (tmp_path / "team.pub").write_text("mine")
        result = runner.invoke(app, ["keygen", "--out", str(tmp_path / "team.key")])
        assert result.exit_code == 2 and "AF0960" in result.stderr
        assert not (tmp_path / "team.key").exists()

    def test_force_replaces(self, tmp_path: Path):
        key = tmp_path / "team.key"
        first = runner.invoke(app, ["keygen", "--out", str(key)]).stdout
        second = runner.invoke(app, ["keygen", "--out", str(key), "--force", "--json"])
        assert second.exit_code == 0
        report = json.loads(second.stdout)
        assert report["key_id"] != first.strip() and report["public_key"] == str(tmp_path / "team.pub")

    def test_passphrase_encrypts(self, tmp_path: Path):
        key = tmp_path / "team.key"
        result = runner.invoke(app, ["keygen", "--out", str(key)], env={"AF_SIGNING_PASSPHRASE": "s3cret"})
        assert result.exit_code == 0 and "encrypted" in result.stderr
        assert b"ENCRYPTED" in key.read_bytes()
        assert signing.load_private_key(key.read_bytes(), passphrase=b"s3cret").key_id == result.stdout.strip()

    def test_unwritable_directory(self, tmp_path: Path):
        result = runner.invoke(app, ["keygen", "--out", str(tmp_path / "missing" / "team.key")])
        assert result.exit_code == 2 and "AF0961" in result.stderr and "Traceback" not in result.output

    def test_out_is_required(self):
        result = runner.invoke(app, ["keygen"])
        assert result.exit_code == 2 and "--out" in result.output
