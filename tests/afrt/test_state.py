"""Identities and checkpoints (afrt.state)."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import serialization

from afcore.errors import ResourceLimitError, StateError
from afrt.state import (
    CHECKPOINT_NAME, KEY_NAME, Identity, load_checkpoint, load_or_create_identity, write_checkpoint,
)


class TestIdentity:
    def test_created_once_then_reloaded(self, tmp_path):
        first, created = load_or_create_identity(tmp_path, "agent")
        again, created_again = load_or_create_identity(tmp_path, "agent")
        assert created and not created_again
        assert first.agent_id == again.agent_id
        assert (tmp_path / KEY_NAME).stat().st_mode & 0o777 == 0o600

    def test_agent_id_derives_from_public_key(self, tmp_path):
        identity, _ = load_or_create_identity(tmp_path, "classifier")
        key = serialization.load_pem_private_key((tmp_path / KEY_NAME).read_bytes(), password=None)
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert identity.agent_id == "classifier-" + hashlib.sha256(raw).hexdigest()[:12]

    def test_ephemeral_identities_differ(self):
        a, b = Identity.generate("x"), Identity.generate("x")
        assert a.ephemeral and a.agent_id != b.agent_id

    def test_garbage_key_is_refused(self, tmp_path):
        (tmp_path / KEY_NAME).write_text("not a key")
        with pytest.raises(StateError) as info:
            load_or_create_identity(tmp_path, "agent")
        assert info.value.code == "AF5252"


class TestCheckpoint:
    def test_round_trip(self, tmp_path):
        identity, _ = load_or_create_identity(tmp_path, "a")
        write_checkpoint(tmp_path, identity, {"memory": {"count": 5}})
        assert load_checkpoint(tmp_path, identity) == {"memory": {"count": 5}}
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def test_missing_checkpoint_is_none(self, tmp_path):
        assert load_checkpoint(tmp_path, Identity.generate("a")) is None

    @pytest.mark.parametrize("cut", [1, 20, 60, -1])
    def test_truncated_checkpoint_is_refused(self, tmp_path, cut):
        identity, _ = load_or_create_identity(tmp_path, "a")
        write_checkpoint(tmp_path, identity, {"memory": {"count": 5, "pad": "x" * 100}})
        path = tmp_path / CHECKPOINT_NAME
        data = path.read_bytes()
        path.write_bytes(data[:cut] if cut > 0 else data[:cut])
        with pytest.raises(StateError) as info:
            load_checkpoint(tmp_path, identity)
        assert info.value.code == "AF5250" and "corrupt" in info.value.message

    def test_flipped_byte_is_refused(self, tmp_path):
        identity, _ = load_or_create_identity(tmp_path, "a")
        write_checkpoint(tmp_path, identity, {"memory": {"count": 5}})
        path = tmp_path / CHECKPOINT_NAME
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(StateError, match="digest"):
            load_checkpoint(tmp_path, identity)

    def test_checkpoint_of_another_identity_is_refused(self, tmp_path):
        mine, _ = load_or_create_identity(tmp_path, "a")
        write_checkpoint(tmp_path, Identity.generate("a"), {"memory": {}})
        with pytest.raises(StateError) as info:
            load_checkpoint(tmp_path, mine)
        assert info.value.code == "AF5251"

    def test_disk_limit(self, tmp_path):
        identity, _ = load_or_create_identity(tmp_path, "a")
        with pytest.raises(ResourceLimitError) as info:
            write_checkpoint(tmp_path, identity, {"memory": {"pad": "x" * 5000}}, max_bytes=4096)
        assert info.value.code == "AF5253"
        assert not (tmp_path / CHECKPOINT_NAME).exists()

    def test_unwritable_directory(self, tmp_path):
        if os.geteuid() == 0:
            target = tmp_path / "file"
            target.write_text("")
            directory = target / "sub"  # a path under a regular file cannot be created, even by root
        else:
            directory = tmp_path / "ro"
            directory.mkdir(mode=0o500)
        with pytest.raises(StateError) as info:
            write_checkpoint(directory, Identity.generate("a"), {"memory": {}})
        assert info.value.code == "AF5254"
