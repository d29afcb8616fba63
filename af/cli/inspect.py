"""`af inspect`: show what a bundle holds (docs/cli.md, section `af inspect`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._app import command
from ._output import emit, print_table, say

_RUN_ORDER = ("initialization", "execution", "shutdown")


@command("inspect")
@click.argument("path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {bundle, size, sha256, manifest} as JSON on stdout.")
def inspect_command(path: Path, *, as_json: bool) -> None:
    """Verify a bundle and show its manifest, layers, members, sizes, digests and workflows.

    With --json, errors too are JSON on stdout.
    """
    from afcore.bundle import read_bundle

    from ._files import read_checked

    data = read_checked(path, ("bundle",), "af inspect")
    bundle = read_bundle(data)
    from afc.emit import check_manifest

    check_manifest(bundle.manifest)
    if "model.onnx" in bundle.members:
        from afc.lower_onnx import check_model_bytes

        check_model_bytes(bundle.members["model.onnx"])
    report = {"bundle": str(path), "size": len(data), "sha256": bundle.digest, "manifest": bundle.manifest}
    if as_json:
        emit(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    from .compile import print_layers

    manifest = report["manifest"]
    agent, source, network = manifest.get("agent", {}), manifest.get("source", {}), manifest.get("network", {})
    lines = [
        f"bundle    {report['bundle']} ({report['size']:,} bytes, format {manifest['format_version']})",
        f"sha256    {report['sha256']}",
        f"agent     {agent.get('name')} {agent.get('version')}" + (f" by {agent['author']}" if agent.get("author") else ""),
        f"source    {source.get('file')} sha256 {source.get('sha256')} modified {source.get('modified')}",
        f"compiler  {manifest.get('compiler', {}).get('name')} {manifest.get('compiler', {}).get('version')}",
        f"targets   {', '.join(manifest.get('targets', []))}" + _target_details(manifest),
    ]
    say("\n".join(lines))
    print_layers("network", network.get("layers", []), network.get("parameters", 0))
    rows = [[m["name"], f"{m['size']:,}", m["sha256"]] for m in manifest["members"]]
    # the digest goes before the name when the terminal is too narrow for both: it is in --json
    print_table("members", ("member", "bytes", "sha256"), rows, left=("member", "sha256"), drop_order=("sha256",))
    say(_workflows_text(manifest.get("workflows", {})))


def _target_details(manifest: dict[str, Any]) -> str:
    parts = []
    if "onnx" in manifest:
        parts.append(f"onnx opset {manifest['onnx']['opset']} IR {manifest['onnx']['ir_version']}")
    if "wasm" in manifest:
        wasm = manifest["wasm"]
        parts.append(f"wasm ABI {wasm['abi']} max_batch {wasm['max_batch']} pages {wasm['memory_pages']}")
    return f" ({'; '.join(parts)})" if parts else ""


def _workflows_text(workflows: dict[str, Any]) -> str:
    lines = ["workflows"]
    # run order, not the manifest's sorted key order
    for name in sorted(workflows, key=lambda n: (_RUN_ORDER.index(n) if n in _RUN_ORDER else 9, n)):
        steps = workflows[name]
        lines.append(f"  {name}:" + ("" if steps else " (none)"))
        for step in steps:
            span = step.get("span") or {}
            where = f"{span['path']}:{span['line']}" if span.get("path") else ""
            lines.append(f"    - {step.get('source') or step.get('name'):<48} {where}")
    return "\n".join(lines)
