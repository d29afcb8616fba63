"""`af compile`: .af -> .afb bundle (docs/cli.md, section `af compile`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ._app import command, console, report_error, stdout

if TYPE_CHECKING:
    from afc.emit import Lowered
    from afc.spec import AgentSpec

#: the intermediate forms `--emit` can print instead of writing the bundle
EMIT_FORMS = ("spec", "onnx", "wat", "bundle")
_DEFAULT_MAX_SECTION_BYTES = 2 * 1024**3


@command("compile")
def compile_command(
    path: Path = typer.Argument(..., metavar="PATH", help="The .af file to compile.", dir_okay=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Bundle path (default: beside the source, .afb)."),
    target: str = typer.Option("onnx,wasm", "--target", help="Backends to compile for: onnx, wasm or onnx,wasm."),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    emit: str = typer.Option("bundle", "--emit", help="Print an intermediate form instead: spec, onnx, wat; or bundle."),
    fmt: str = typer.Option("full", "--format", help="Diagnostics as full (source frames), concise or json."),
    max_section_bytes: int = typer.Option(_DEFAULT_MAX_SECTION_BYTES, "--max-section-bytes", min=1,
                                          help="Refuse any section that decompresses to more bytes than this."),
) -> None:
    """Compile an .af file to a bundle (.afb) with its ONNX and WebAssembly models.

    Invalid sources get the diagnostics of `af validate` and exit 1.
    """
    from afc import load_agent_file
    from afc.compile import default_output, lower_agent, parse_targets
    from afcore.errors import SourceError, UsageError

    if emit not in EMIT_FORMS:
        raise UsageError(f"unknown --emit form `{emit}`", code="AF3005", hint=f"use one of {', '.join(EMIT_FORMS)}")
    targets = parse_targets(target)
    started = time.perf_counter()
    try:
        spec = load_agent_file(path, max_section_bytes=max_section_bytes).spec()
    except SourceError as error:
        # `--json` callers read stdout: give them the diagnostics there too
        raise typer.Exit(report_error(error, "json" if json_summary else fmt)) from None
    if emit != "bundle":
        _emit_intermediate(spec, emit)
        return
    lowered = lower_agent(spec, targets=targets)
    destination = Path(output) if output is not None else default_output(path)
    summary = _write(spec, lowered, destination)
    summary["seconds"] = round(time.perf_counter() - started, 4)
    if json_summary:
        stdout.print(json.dumps(summary, indent=2, sort_keys=True), markup=False, highlight=False)
    else:
        _print_summary(summary)


def _write(spec: AgentSpec, lowered: Lowered, destination: Path) -> dict[str, Any]:
    from afc.compile import write_bundle_file

    size, sha256, members = write_bundle_file(destination, spec, lowered)
    network = spec.network
    last = len(network.layers) - 1
    return {
        "bundle": str(destination),
        "size": size,
        "sha256": sha256,
        "agent": {"name": spec.name, "version": str(spec.version)},
        "targets": [t for t in ("onnx", "wasm") if getattr(lowered, t) is not None],
        "parameters": network.parameters,
        "layers": [{"index": layer.index, "in": layer.in_size, "out": layer.out_size,
                    "activation": network.output_activation if layer.index == last else layer.activation,
                    "parameters": layer.parameters} for layer in network.layers],
        "members": [{"name": name, "size": members[name]} for name in sorted(members)],
    }


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    layers = Table(title=f"{summary['agent']['name']} {summary['agent']['version']}", title_justify="left")
    for column in ("layer", "shape", "activation", "parameters"):
        layers.add_column(column, justify="right" if column in ("layer", "parameters") else "left")
    for layer in summary["layers"]:
        layers.add_row(str(layer["index"]), f"{layer['in']} -> {layer['out']}", layer["activation"],
                       f"{layer['parameters']:,}")
    layers.add_row("", "", "total", f"{summary['parameters']:,}")
    members = Table(show_header=True)
    members.add_column("member")
    members.add_column("bytes", justify="right")
    for member in summary["members"]:
        members.add_row(member["name"], f"{member['size']:,}")
    console.print(layers)
    console.print(members)
    console.print(
        f"wrote {summary['bundle']} ({summary['size']:,} bytes, targets {','.join(summary['targets'])}) "
        f"in {summary['seconds']:.3f} s\nsha256 {summary['sha256']}",
        markup=False, highlight=False,
    )


def _emit_intermediate(spec: AgentSpec, form: str) -> None:
    from afc.compile import WASM_MAX_BATCH

    if form == "spec":
        from afc.emit import Lowered, build_manifest

        text = json.dumps(build_manifest(spec, Lowered()).to_json(), indent=2, sort_keys=True)
    elif form == "onnx":
        from afc.lower_onnx import lower_network, model_text

        text = model_text(lower_network(spec.network, graph_name=spec.name))
    else:
        from afc.lower_wasm import lower_network as lower_wasm

        text = lower_wasm(spec.network, max_batch=WASM_MAX_BATCH).wat
    stdout.print(text, markup=False, highlight=False)
