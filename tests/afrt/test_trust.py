"""Rollback protection (afrt.trust via afrt.load(trust=, state_dir=)): versions only grow per agent and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import afrt
from afcore import signing
from afcore.bundle import read_bundle, write_bundle
from afcore.errors import BundleError, StateError
from afrt.trust import TRUST_STATE_NAME, check_rollback

KEY = signing.generate_key()
OTHER = signing.generate_key()


@pytest.fixture(scope="module")
def plain(example_bundles: dict[str, Path]) -> bytes:
    return example_bundles["xor"].read_bytes()


def rebuilt(plain: bytes, note: bytes) -> bytes:
    """Another build of the same agent (agent.yaml differs)."""
    bundle = read_bundle(plain)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "members"}
    return write_bundle(manifest, {**bundle.members, "agent.yaml": bundle.members["agent.yaml"] + note})


def load(data: bytes, state: Path, keys=(KEY,)):
    return afrt.load(data, trust=[k.public_key for k in keys], state_dir=state)


class TestRollback:
    def test_versions_only_grow(self, plain: bytes, tmp_path: Path):
        v1, v2 = signing.sign_bundle(plain, KEY, version=1), signing.sign_bundle(rebuilt(plain, b"#2\n"), KEY, version=2)
        load(v1, tmp_path)
        load(v2, tmp_path)
        load(v2, tmp_path)  # the same bundle again: fine
        with pytest.raises(BundleError) as caught:
            load(v1, tmp_path)
        assert caught.value.code == "AF4056" and "rollback" in caught.value.message
        state = json.loads((tmp_path / TRUST_STATE_NAME).read_text())
        assert state["agents"]["xor-agent"][KEY.key_id]["version"] == 2

    def test_same_version_other_manifest(self, plain: bytes, tmp_path: Path):
        load(signing.sign_bundle(plain, KEY, version=5), tmp_path)
        with pytest.raises(BundleError) as caught:
            load(signing.sign_bundle(rebuilt(plain, b"#b\n"), KEY, version=5), tmp_path)
        assert caught.value.code == "AF4057"

    def test_versions_are_per_key(self, plain: bytes, tmp_path: Path):
        load(signing.sign_bundle(plain, KEY, version=9), tmp_path)
        load(signing.sign_bundle(plain, OTHER, version=1), tmp_path, keys=(KEY, OTHER))
        state = json.loads((tmp_path / TRUST_STATE_NAME).read_text())["agents"]["xor-agent"]
        assert state == {KEY.key_id: {"version": 9, "manifest_sha256": state[KEY.key_id]["manifest_sha256"]},
                         OTHER.key_id: {"version": 1, "manifest_sha256": state[OTHER.key_id]["manifest_sha256"]}}

    def test_without_state_dir_nothing_is_recorded(self, plain: bytes, tmp_path: Path):
        agent = afrt.load(signing.sign_bundle(plain, KEY, version=3), trust=[KEY.public_key])
        assert agent.bundle.signature.version == 3
        assert not (tmp_path / TRUST_STATE_NAME).exists()

    @pytest.mark.parametrize("content", [b"not json", b"[]", b'{"format": 1, "agents": {"a": {"k": {"version": "1"}}}}'])
    def test_corrupt_state_is_refused(self, plain: bytes, tmp_path: Path, content: bytes):
        (tmp_path / TRUST_STATE_NAME).write_bytes(content)
        with pytest.raises(StateError) as caught:
            load(signing.sign_bundle(plain, KEY, version=1), tmp_path)
        assert caught.value.code == "AF4058"

    def test_the_recorded_version_never_goes_down(self, plain: bytes, tmp_path: Path):
        bundle = signing.read_signed_bundle(signing.sign_bundle(plain, KEY, version=4), [KEY.public_key])
        check_rollback(tmp_path, "xor-agent", bundle.verified)
        older = signing.read_signed_bundle(signing.sign_bundle(plain, KEY, version=3), [KEY.public_key])
        with pytest.raises(BundleError):
            check_rollback(tmp_path, "xor-agent", older.verified)
        assert json.loads((tmp_path / TRUST_STATE_NAME).read_text())["agents"]["xor-agent"][KEY.key_id]["version"] == 4


class TestLoadWithTrust:
    def test_unsigned_is_refused(self, plain: bytes):
        with pytest.raises(BundleError) as caught:
            afrt.load(plain, trust=[KEY.public_key])
        assert caught.value.code == "AF4050"

    def test_a_bundle_read_before_is_checked_too(self, plain: bytes):
        signed = signing.sign_bundle(plain, KEY, version=1)
        assert afrt.load(read_bundle(signed), trust=[KEY.public_key]).bundle.signature.key_id == KEY.key_id
        with pytest.raises(BundleError) as caught:
            afrt.load(read_bundle(signed), trust=[OTHER.public_key])
        assert caught.value.code == "AF4051"

    def test_a_loaded_bundle_must_carry_a_trusted_signature(self, plain: bytes):
        signed = signing.sign_bundle(plain, KEY, version=1)
        with pytest.raises(BundleError) as caught:
            afrt.load(afrt.load_bundle(signed), trust=[KEY.public_key])
        assert caught.value.code == "AF4050"
        loaded = afrt.load_bundle(signed, trust=[KEY.public_key])
        assert afrt.load(loaded, trust=[KEY.public_key]).bundle.signature.version == 1
        with pytest.raises(BundleError) as caught:
            afrt.load(loaded, trust=[OTHER.public_key])
        assert caught.value.code == "AF4051"


def test_a_killed_writers_temporary_is_removed(plain: bytes, tmp_path: Path):
    stale = tmp_path / f".{TRUST_STATE_NAME}.abcd1234.tmp"
    stale.write_text("half")
    load(signing.sign_bundle(plain, KEY, version=1), tmp_path)
    assert not stale.exists() and (tmp_path / TRUST_STATE_NAME).exists()
