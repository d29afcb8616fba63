"""`af compile`: .af -> .afb bundle (docs/cli.md, section `af compile`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import click

from ._app import command
from ._output import emit, print_table, report_error, say
from .validate import DEFAULT_MAX_SECTION_BYTES, FORMATS

#: the intermediate forms `--emit` can print instead of writing the bundle (afc.EMIT_FORMS)
EMIT_FORMS = ("spec", "onnx", "wat", "bundle")


@command("compile")
@click.argument("path", metavar="PATH", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Bundle path (default: beside the source, .afb); missing directories are created.")
@click.option("--target", default="onnx,wasm", show_default=True,
              help="Backends to compile for: onnx, wasm or onnx,wasm.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--emit", "form", default="bundle", show_default=True, type=click.Choice(EMIT_FORMS),
              help="Print an intermediate form instead of writing the bundle.")
@click.option("--format", "fmt", default="full", show_default=True, type=click.Choice(FORMATS),
              help="Diagnostics as full (source frames), concise or json.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success (errors are still reported).")
@click.option("--max-section-bytes", default=DEFAULT_MAX_SECTION_BYTES, show_default=True,
              type=click.IntRange(min=1), help="Refuse any section that decompresses to more bytes than this.")
def compile_command(path: Path, *, output: Optional[Path], target: str, as_json: bool, form: str, fmt: str,
                    quiet: bool, max_section_bytes: int) -> None:
    """Compile an .af file to a bundle (.afb) with its ONNX and WebAssembly models.

    Invalid sources get the diagnostics of `af validate` and exit 1.
    """
    import afc
    from afcore.errors import SourceError

    from ._files import check_input, check_output

    targets = afc.parse_targets(target)
    check_input(path, ("agent",), "af compile")
    destination = check_output(output, create_parents=False) if output is not None else afc.default_output(path)
    started = time.perf_counter()
    try:
        spec = afc.load_agent_file(path, max_section_bytes=max_section_bytes).spec()
    except SourceError as error:
        # `--json` callers read stdout: give them the diagnostics there too
        raise click.exceptions.Exit(report_error(error, "json" if as_json else fmt)) from None
    if form != "bundle":
        emit(afc.emit_intermediate(spec, form))
        return
    result = afc.compile_spec(spec, output=destination, targets=targets)
    summary = {**result.to_json(), "seconds": round(time.perf_counter() - started, 4)}
    if as_json:
        emit(json.dumps(summary, indent=2, sort_keys=True))
    elif not quiet:
        _print_summary(summary)


def print_layers(title: str, layers: list[dict[str, Any]], parameters: int) -> None:
    """Print the layer table of `af compile` and `af inspect` (manifest ``network.layers`` entries)."""
    rows = [[str(layer["index"]), f"{layer['in']} -> {layer['out']}", layer["activation"], f"{layer['parameters']:,}"]
            for layer in layers]
    rows.append(["", "", "total", f"{parameters:,}"])
    print_table(title, ("layer", "shape", "activation", "parameters"), rows, left=("shape", "activation"))


def _print_summary(summary: dict[str, Any]) -> None:
    print_layers(f"{summary['agent']['name']} {summary['agent']['version']}", summary["layers"],
                 summary["parameters"])
    print_table("members", ("member", "bytes"), [[m["name"], f"{m['size']:,}"] for m in summary["members"]],
                left=("member",))
    say(f"wrote {summary['bundle']} ({summary['size']:,} bytes, targets {','.join(summary['targets'])}) "
        f"in {summary['seconds']:.3f} s\nsha256 {summary['sha256']}")
