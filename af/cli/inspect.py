"""`af inspect`: show what a bundle holds (docs/cli.md, section `af inspect`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import typer

from ._app import command, console, stdout

if TYPE_CHECKING:
    from afcore.manifest import Manifest, MemberEntry

#: rows of the members table; a bundle listing more shows these and "and N more" (100,000 rows took 37 s)
MAX_MEMBER_ROWS = 50


@command("inspect")
def inspect_command(
    path: Path = typer.Argument(..., metavar="BUNDLE", help="The .afb bundle to inspect.", dir_okay=False),
    as_json: bool = typer.Option(False, "--json", help="Print {bundle, size, sha256, manifest} as JSON on stdout."),
) -> None:
    """Verify a bundle and show its manifest, layers, members, sizes, digests and workflows."""
    from afcore.bundle import read_bundle
    from afcore.manifest import Manifest

    bundle = read_bundle(path)  # AF4015 when unreadable; a file far past the size cap is refused unread
    size = path.stat().st_size
    manifest = Manifest.from_json(bundle.manifest)
    if "model.onnx" in bundle.members:
        from afc.lower_onnx import check_model_bytes

        check_model_bytes(bundle.members["model.onnx"])
    if as_json:
        report = {"bundle": str(path), "size": size, "sha256": bundle.digest, "manifest": bundle.manifest}
        stdout.print(json.dumps(report, indent=2, sort_keys=True), markup=False, highlight=False)
    else:
        _print_report(str(path), size, bundle.digest, manifest)


def _print_report(path: str, size: int, digest: str, manifest: Manifest) -> None:
    from rich.table import Table

    agent, source, network = manifest.agent, manifest.source, manifest.network
    lines = [
        f"bundle    {path} ({size:,} bytes, format {manifest.format_version})",
        f"sha256    {digest}",
        f"agent     {agent.name} {agent.version}" + (f" by {agent.author}" if agent.author else ""),
        f"source    {source.file} sha256 {source.sha256} modified {source.modified}",
        f"compiler  {manifest.compiler[0]} {manifest.compiler[1]}",
        f"targets   {', '.join(manifest.targets)}" + _target_details(manifest),
    ]
    console.print("\n".join(lines), markup=False, highlight=False)
    layers = Table(title="network", title_justify="left")
    for column in ("layer", "shape", "activation", "parameters"):
        layers.add_column(column, justify="right" if column in ("layer", "parameters") else "left")
    for layer in network.layers:
        layers.add_row(str(layer.index), f"{layer.in_size} -> {layer.out_size}", layer.activation, f"{layer.parameters:,}")
    layers.add_row("", "", "total", f"{network.parameters:,}")
    console.print(layers)
    console.print(_members_table(manifest.members or ()))
    console.print(_workflows_text(manifest), markup=False, highlight=False)


def _members_table(members: Sequence[MemberEntry]) -> Any:
    """The members, the first `MAX_MEMBER_ROWS` of them with a closing "and N more" row (`--json` has all)."""
    from rich.table import Table

    table = Table(title=f"members ({len(members):,})", title_justify="left")
    for column in ("member", "bytes", "sha256"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for member in members[:MAX_MEMBER_ROWS]:
        table.add_row(member.name, f"{member.size:,}", member.sha256)
    if len(members) > MAX_MEMBER_ROWS:
        rest = members[MAX_MEMBER_ROWS:]
        table.add_row(f"... and {len(rest):,} more", f"{sum(m.size for m in rest):,}", "(see --json)")
    return table


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
