"""Agent identity (Ed25519) and checkpoints in the state directory.

Layout of a state directory (one subdirectory per agent replica)::

    <state-dir>/<agent name>/r<replica>/identity.key      PEM PKCS#8 Ed25519 private key (mode 0600)
    <state-dir>/<agent name>/r<replica>/checkpoint.afs    the last checkpoint

A checkpoint is a small self-checking file::

    AFSTATE1\\n
    {"length": N, "sha256": "<hex of payload>", "signature": "<hex Ed25519 of payload>"}\\n
    <payload: N bytes of JSON: agent, agent_id, bundle_digest, saved_at, memory, weights>

It is written atomically (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new checkpoint. Loading checks the magic,
the length, the digest and the signature, and refuses anything else with a `StateError`:
a checkpoint is used whole or not at all.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from afcore import fsutil
from afcore.errors import ResourceLimitError, StateError

__all__ = [
    "CHECKPOINT_NAME",
    "Identity",
    "KEY_NAME",
    "PUBLIC_KEY_NAME",
    "commit_checkpoint",
    "load_checkpoint",
    "load_or_create_identity",
    "lock_state_dir",
    "prepare_checkpoint",
    "replica_dir",
    "write_checkpoint",
    "write_public_key",
]

#: the file name of the identity key inside a replica's state directory
KEY_NAME = "identity.key"
#: the file name of the identity's public key (PEM), which a Redis worker writes beside its key
#: (what `af submit --admit` takes)
PUBLIC_KEY_NAME = "identity.pub"
#: the file name of the checkpoint inside a replica's state directory
CHECKPOINT_NAME = "checkpoint.afs"
#: first line of every checkpoint file
MAGIC = b"AFSTATE1\n"
#: a header line longer than this is not ours
MAX_HEADER = 4096


@dataclass(frozen=True)
class Identity:
    """An agent's key pair; ``agent_id`` is ``<name>-<first 12 hex of sha256(public key)>``.

    Args:
        name: the agent's name.
        private_key: the Ed25519 private key.
        ephemeral: True when it lives only in memory (no state directory).
    """

    name: str
    private_key: Ed25519PrivateKey
    ephemeral: bool = False

    @functools.cached_property
    def public_bytes(self) -> bytes:
        """Return the raw 32-byte public key."""
        return self.private_key.public_key().public_bytes_raw()

    @functools.cached_property
    def agent_id(self) -> str:
        """Return the agent id derived from the public key."""
        return f"{self.name}-{hashlib.sha256(self.public_bytes).hexdigest()[:12]}"

    def sign(self, data: bytes) -> bytes:
        """Return the Ed25519 signature of ``data``."""
        return self.private_key.sign(data)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return True when ``signature`` is this identity's signature of ``data``."""
        public: Ed25519PublicKey = self.private_key.public_key()
        try:
            public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def generate(cls, name: str) -> Identity:
        """Return a fresh ephemeral identity (not written anywhere)."""
        return cls(name, Ed25519PrivateKey.generate(), ephemeral=True)


def replica_dir(state_dir: str | os.PathLike[str], agent_name: str, replica: int) -> Path:
    """Return the state directory of one replica of an agent."""
    return Path(state_dir) / agent_name / f"r{replica}"


def load_or_create_identity(directory: str | os.PathLike[str], name: str) -> tuple[Identity, bool]:
    """Load the identity kept in ``directory``, creating it on first start.

    Returns:
        (the identity, True when it was created now).

    Raises:
        StateError: AF5252 when the key file exists but is not an Ed25519 private key,
            AF5254 when the directory cannot be written.
    """
    # Only identities kept on disk need PEM: importing it costs ~16 ms of every `af run` start.
    from cryptography.hazmat.primitives import serialization

    path = Path(directory) / KEY_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _write_atomic(path, pem, mode=0o600)
        return Identity(name, key), True
    except OSError as exc:
        raise StateError(f"cannot read the identity key {path}: {exc.strerror}", code="AF5254") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise StateError(
            f"{path} is not an Ed25519 private key",
            code="AF5252",
            hint="restore the file from a backup, or delete it to give the agent a new identity",
        )
    return Identity(name, key), False


def write_public_key(directory: str | os.PathLike[str], identity: Identity) -> Path:
    """Write the public key of ``identity`` (PEM SubjectPublicKeyInfo) to ``directory/identity.pub``.

    Returns:
        The path written (left as it is when it already holds that key).

    Raises:
        StateError: AF5254 when it cannot be written.
    """
    from cryptography.hazmat.primitives import serialization

    path = Path(directory) / PUBLIC_KEY_NAME
    pem = identity.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        if path.read_bytes() == pem:
            return path
    except OSError:
        pass
    _write_atomic(path, pem)
    return path


def lock_state_dir(directory: str | os.PathLike[str]) -> int:
    """Take an exclusive lock on a replica's state directory for this process.

    Once the lock is held, temporaries a killed writer left in the directory are removed
    (`afcore.fsutil.clean_stale_temporaries`).

    Returns:
        The lock's file descriptor; closing it releases the lock (the OS does at exit too).

    Raises:
        StateError: AF5255 when another process holds it, AF5254 when it cannot be created.
    """
    import fcntl

    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"cannot use the state directory {path}: {exc.strerror}", code="AF5254") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StateError(
            f"the state directory {path} is in use by another process",
            code="AF5255",
            hint="two runs must not share a replica's state: use another --state-dir or wait for the other run",
        ) from None
    # Ours alone now: a temporary here was left by a writer that was killed (SIGKILL, power loss).
    fsutil.clean_stale_temporaries(path)
    return fd


def _write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` with `afcore.fsutil.write_file_atomic`, as a `StateError` on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fsutil.write_file_atomic(path, data, mode=mode)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}", code="AF5254") from None


def encode_checkpoint(identity: Identity, payload: dict[str, Any]) -> bytes:
    """Return the bytes of a checkpoint holding ``payload``, signed by ``identity``."""
    body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_SORT_KEYS)
    header = {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "signature": identity.sign(body).hex(),
    }
    return MAGIC + orjson.dumps(header) + b"\n" + body


def write_checkpoint(directory: str | os.PathLike[str], identity: Identity, payload: dict[str, Any], *, max_bytes: int | None = None) -> int:
    """Write a checkpoint atomically (`prepare_checkpoint`, then `commit_checkpoint`).

    Returns:
        The number of bytes written.

    Raises:
        ResourceLimitError: AF5253 when the checkpoint would exceed ``max_bytes``.
        StateError: AF5254 when the directory cannot be written.
    """
    data = prepare_checkpoint(directory, identity, payload, max_bytes=max_bytes)
    commit_checkpoint(directory, data)
    return len(data)


def prepare_checkpoint(directory: str | os.PathLike[str], identity: Identity, payload: dict[str, Any], *,
                       max_bytes: int | None = None) -> bytes:
    """Encode and sign a checkpoint, checking that it fits the disk budget; write nothing.

    Args:
        directory: the replica's state directory.
        identity: signs the checkpoint.
        payload: JSON-able data (numpy arrays allowed).
        max_bytes: the ``disk_mb`` budget; the checkpoint plus the key must fit in it.

    Returns:
        The checkpoint's bytes, for `commit_checkpoint`.

    Raises:
        ResourceLimitError: AF5253 when the checkpoint would exceed ``max_bytes``.
    """
    data = encode_checkpoint(identity, payload)
    key_path = Path(directory) / KEY_NAME
    used = len(data) + (key_path.stat().st_size if key_path.exists() else 0)
    if max_bytes is not None and used > max_bytes:
        raise ResourceLimitError(
            f"checkpoint of {used} bytes exceeds the disk limit of {max_bytes} bytes",
            code="AF5253",
            agent=identity.agent_id,
            hint="raise `resources.limits.disk_mb` or keep less in memory",
        )
    return data


def commit_checkpoint(directory: str | os.PathLike[str], data: bytes) -> None:
    """Write a prepared checkpoint atomically.

    Raises:
        StateError: AF5254 when the directory cannot be written.
    """
    _write_atomic(Path(directory) / CHECKPOINT_NAME, data)


def load_checkpoint(directory: str | os.PathLike[str], identity: Identity) -> dict[str, Any] | None:
    """Load the checkpoint of ``directory``, or None when there is none.

    Raises:
        StateError: AF5250 when it is truncated or corrupt (bad magic, length or digest),
            AF5251 when it was signed by another identity.
    """
    path = Path(directory) / CHECKPOINT_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}", code="AF5254") from None
    header, body = _split(path, data)
    if len(body) != header["length"]:
        _corrupt(path, f"truncated: holds {len(body)} of {header['length']} payload bytes")
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        _corrupt(path, "its sha256 digest does not match: the file was damaged")
    try:
        signature = bytes.fromhex(header["signature"])
    except ValueError:
        _corrupt(path, "its signature is not hex")
    if not identity.verify(signature, body):
        raise StateError(
            f"checkpoint {path} was not signed by {identity.agent_id}",
            code="AF5251",
            agent=identity.agent_id,
            hint="the checkpoint belongs to another identity: restore its identity.key or delete the checkpoint",
        )
    payload = orjson.loads(body)
    if not isinstance(payload, dict):
        _corrupt(path, "its payload is not an object")
    return payload


def _split(path: Path, data: bytes) -> tuple[dict[str, Any], bytes]:
    if not data.startswith(MAGIC):
        _corrupt(path, "it does not start with the checkpoint magic `AFSTATE1`")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        _corrupt(path, "its header line is missing or truncated")
    try:
        header = orjson.loads(data[len(MAGIC) : end])
    except orjson.JSONDecodeError:
        _corrupt(path, "its header is not JSON")
    if (
        not isinstance(header, dict)
        or not isinstance(header.get("length"), int)
        or not isinstance(header.get("sha256"), str)
        or not isinstance(header.get("signature"), str)
    ):
        _corrupt(path, "its header lacks length, sha256 or signature")
    return header, data[end + 1 :]


def _corrupt(path: Path, why: str) -> NoReturn:
    raise StateError(
        f"checkpoint {path} is corrupt: {why}",
        code="AF5250",
        hint="restore it from a backup, or delete it to start this agent from a fresh memory",
    )
