"""`af inspect`: show what a bundle holds (docs/cli.md, section `af inspect`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import click

from ._app import command
from ._load import max_bundle_option
from ._output import emit, print_table, say

if TYPE_CHECKING:
    from afcore.manifest import Manifest, MemberEntry

#: rows of the members table; a bundle listing more shows these and "and N more" (100,000 rows took 37 s)
MAX_MEMBER_ROWS = 50


@command("inspect")
@click.argument("path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {bundle, size, sha256, manifest} as JSON on stdout.")
@max_bundle_option
def inspect_command(path: Path, *, as_json: bool, max_bundle_mb: Optional[int]) -> None:
    """Verify a bundle and show its manifest, layers, members, sizes, digests and workflows.

    With --json, errors too are JSON on stdout.
    """
    from afcore.bundle import read_bundle
    from afcore.manifest import Manifest

    from ._files import check_input
    from ._load import bundle_cap

    check_input(path, ("bundle",), "af inspect")
    bundle = read_bundle(path, max_total_bytes=bundle_cap(max_bundle_mb))  # a file far past the cap is refused unread
    size = path.stat().st_size
    manifest = Manifest.from_json(bundle.manifest)
    if "model.onnx" in bundle.members:
        from afc import check_model_bytes

        check_model_bytes(bundle.members["model.onnx"])
    if as_json:
        report = {"bundle": str(path), "size": size, "sha256": bundle.digest, "manifest": bundle.manifest}
        emit(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_report(str(path), size, bundle.digest, manifest)


def _print_report(path: str, size: int, digest: str, manifest: Manifest) -> None:
    from .compile import print_layers

    agent, source, network = manifest.agent, manifest.source, manifest.network
    lines = [
        f"bundle    {path} ({size:,} bytes, format {manifest.format_version})",
        f"sha256    {digest}",
        f"agent     {agent.name} {agent.version}" + (f" by {agent.author}" if agent.author else ""),
        f"source    {source.file} sha256 {source.sha256} modified {source.modified}",
        f"compiler  {manifest.compiler[0]} {manifest.compiler[1]}",
        f"targets   {', '.join(manifest.targets)}" + _target_details(manifest),
    ]
    say("\n".join(lines))
    layers = [{"index": layer.index, "in": layer.in_size, "out": layer.out_size, "activation": layer.activation,
               "parameters": layer.parameters} for layer in network.layers]
    print_layers("network", layers, network.parameters)
    _print_members(manifest.members or ())
    say(_workflows_text(manifest))


def _print_members(members: Sequence[MemberEntry]) -> None:
    """The members, the first `MAX_MEMBER_ROWS` of them with a closing "and N more" row (`--json` has all)."""
    rows = [[m.name, f"{m.size:,}", m.sha256] for m in members[:MAX_MEMBER_ROWS]]
    if len(members) > MAX_MEMBER_ROWS:
        rest = members[MAX_MEMBER_ROWS:]
        rows.append([f"... and {len(rest):,} more", f"{sum(m.size for m in rest):,}", "(see --json)"])
    # the digest goes before the name when the terminal is too narrow for both: it is in --json
    print_table(f"members ({len(members):,})", ("member", "bytes", "sha256"), rows, left=("member", "sha256"),
                drop_order=("sha256",))


def _target_details(manifest: Manifest) -> str:
    parts = []
    if manifest.onnx is not None:
        parts.append(f"onnx opset {manifest.onnx.opset} IR {manifest.onnx.ir_version}")
    if manifest.wasm is not None:
        wasm = manifest.wasm
        parts.append(f"wasm ABI {wasm.abi} max_batch {wasm.max_batch} pages {wasm.memory_pages}")
    return f" ({'; '.join(parts)})" if parts else ""


def _workflows_text(manifest: Manifest) -> str:
    lines = ["workflows"]
    for name, steps in manifest.workflows.items():  # in run order
        lines.append(f"  {name}:" + ("" if steps else " (none)"))
        for step in steps:
            span = step.span or {}
            where = f"{span['path']}:{span['line']}" if span.get("path") else ""
            lines.append(f"    - {step.source or step.name:<48} {where}")
    return "\n".join(lines)
