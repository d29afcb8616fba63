"""`af verify`: check a bundle's signature against trusted keys (docs/cli.md, section `af verify`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ._app import command
from ._keys import trust_option
from ._load import max_bundle_option
from ._output import emit, say


@command("verify")
@click.argument("path", metavar="BUNDLE", type=click.Path(path_type=Path))
@trust_option
@click.option("--json", "as_json", is_flag=True,
              help="Print {bundle, agent, agent_version, key_id, version, manifest_sha256, sha256} as JSON on stdout.")
@max_bundle_option
def verify_command(path: Path, *, trust: tuple[Path, ...], as_json: bool, max_bundle_mb: Optional[int]) -> None:
    """Verify that a bundle is signed by one of the --trust keys and unaltered since; print the signer's key id.

    The signature is checked before the manifest is read, then every member against the manifest.
    Exit 0 when it verifies; 1 and the reason (AF4050-AF4055) when not. With --json, errors too
    are JSON on stdout.
    """
    from afcore.errors import UsageError
    from afcore.manifest import Manifest
    from afcore.signing import read_signed_bundle

    from ._files import check_input
    from ._keys import read_trusted_keys
    from ._load import bundle_cap

    if not trust:
        raise UsageError("af verify needs at least one --trust key", code="AF0966",
                         hint="pass the signer's public key: af verify BUNDLE --trust team.pub")
    check_input(path, ("bundle",), "af verify")
    keys = read_trusted_keys(trust)
    bundle = read_signed_bundle(path, keys, max_total_bytes=bundle_cap(max_bundle_mb))
    agent = Manifest.from_json(bundle.manifest).agent
    signature = bundle.verified
    if as_json:
        emit(json.dumps({"bundle": str(path), "agent": agent.name, "agent_version": agent.version,
                         "sha256": bundle.digest, **signature.to_json()}, sort_keys=True))
    else:
        emit(signature.key_id)
    say(f"verified {path}: agent {agent.name} {agent.version}, signed by key {signature.key_id}, "
        f"version {signature.version}")
