"""`af compile`: .af -> .afb bundle (docs/cli.md, section `af compile`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ._app import command, console, report_error, stdout

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
    import afc
    from afcore.errors import SourceError

    afc.ensure_emit_form(emit)
    targets = afc.parse_targets(target)
    started = time.perf_counter()
    try:
        spec = afc.load_agent_file(path, max_section_bytes=max_section_bytes).spec()
    except SourceError as error:
        # `--json` callers read stdout: give them the diagnostics there too
        raise typer.Exit(report_error(error, "json" if json_summary else fmt)) from None
    if emit != "bundle":
        stdout.print(afc.emit_intermediate(spec, emit), markup=False, highlight=False)
        return
    result = afc.compile_spec(spec, output=output if output is not None else afc.default_output(path), targets=targets)
    summary = {**result.to_json(), "seconds": round(time.perf_counter() - started, 4)}
    if json_summary:
        stdout.print(json.dumps(summary, indent=2, sort_keys=True), markup=False, highlight=False)
    else:
        _print_summary(summary)


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
