"""Rollback protection: the highest signed version of each agent and key that ran from a state directory.

``<state-dir>/trust.json`` (written atomically, read and updated under an exclusive lock on
``<state-dir>/.trust.lock``, so that two runs sharing the directory never lower it)::

    {"format": 1, "agents": {"<agent name>": {"<key id>": {"version": N, "manifest_sha256": "<hex>"}}}}

`check_rollback` refuses a bundle signed with a lower version than the one recorded for its agent
and key (AF4056), and one of the same version whose manifest differs (AF4057: a signer gave two
different bundles one version, and the newer must get a higher one); otherwise it records the
version and the manifest. A version recorded for one key says nothing about another key's versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afcore import fsutil
from afcore.errors import BundleError, StateError

if TYPE_CHECKING:
    from afcore.signing import Signature

__all__ = ["TRUST_STATE_NAME", "check_rollback"]

#: the file in a state directory that holds the highest signed versions that ran
TRUST_STATE_NAME = "trust.json"


def _corrupt(path: Path, why: str) -> StateError:
    return StateError(f"the trust state {path} is corrupt: {why}", code="AF4058",
                      hint="restore it from a backup; deleting it forgets which versions ran (rollbacks "
                      "to any signed version are then accepted once)")


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {"format": 1, "agents": {}}
    except OSError as exc:
        raise StateError(f"cannot read the trust state {path}: {exc.strerror}", code="AF4058") from None
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _corrupt(path, "it is not JSON") from None
    if not isinstance(state, dict) or state.get("format") != 1 or not isinstance(state.get("agents"), dict):
        raise _corrupt(path, "it is not {format: 1, agents: {...}}")
    for keys in state["agents"].values():
        for entry in keys.values() if isinstance(keys, dict) else [None]:
            version = entry.get("version") if isinstance(entry, dict) else None
            if not isinstance(version, int) or isinstance(version, bool) or not isinstance(entry.get("manifest_sha256"), str):
                raise _corrupt(path, "an entry is not {version, manifest_sha256}")
    return state


def check_rollback(state_dir: str | os.PathLike[str], agent: str, signature: Signature) -> None:
    """Refuse a signed bundle older than one that already ran from ``state_dir``; record it otherwise.

    Args:
        state_dir: the run's state directory (created when missing).
        agent: the agent's name (``agent.name`` of the signed manifest).
        signature: the bundle's verified signature.

    Raises:
        BundleError: AF4056 for a version below the recorded one (rollback); AF4057 for the
            recorded version with another manifest.
        StateError: AF4058 when the trust state cannot be read, parsed or written.
    """
    import fcntl

    directory = Path(state_dir)
    path = directory / TRUST_STATE_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(directory / ".trust.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StateError(f"cannot use the state directory {directory}: {exc.strerror}", code="AF4058") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held for a read and a write: milliseconds
        for stale in directory.glob(f".{TRUST_STATE_NAME}.*.tmp"):  # a writer killed mid-write (we hold the lock)
            stale.unlink(missing_ok=True)
        state = _read_state(path)
        keys = state["agents"].setdefault(agent, {})
        _ensure_newer(keys.get(signature.key_id), agent, signature)
        keys[signature.key_id] = {"version": signature.version, "manifest_sha256": signature.manifest_sha256}
        try:
            fsutil.write_file_atomic(path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
        except OSError as exc:
            raise StateError(f"cannot write the trust state {path}: {exc.strerror or exc}", code="AF4058") from None
    finally:
        os.close(lock)


def _ensure_newer(recorded: dict[str, Any] | None, agent: str, signature: Signature) -> None:
    if recorded is None or signature.version > recorded["version"]:
        return
    who = f"agent {agent!r} signed by key {signature.key_id}"
    if signature.version < recorded["version"]:
        raise BundleError(f"rollback refused: version {signature.version} of {who} is older than version "
                          f"{recorded['version']}, which already ran from this state directory", code="AF4056",
                          hint="run the newest signed bundle; an older one may bring back what its successor fixed")
    if signature.manifest_sha256 != recorded["manifest_sha256"]:
        raise BundleError(f"version {signature.version} of {who} already ran with another manifest", code="AF4057",
                          hint="two different bundles were signed with one version: sign the newer one with a "
                          "higher `af sign --version`")
