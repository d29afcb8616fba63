"""`af pack`: put safetensors files into an .af file's sections (docs/cli.md, section `af pack`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ._app import command, console, stdout

#: what `--max-section-bytes` defaults to (afc.reader.DEFAULT_MAX_SECTION_BYTES, repeated to keep `--help` light)
_DEFAULT_MAX_SECTION_BYTES = 2 * 1024**3


@command("pack")
def pack_command(
    path: Path = typer.Argument(..., metavar="PATH", help="The .af file whose sections to replace or add.", dir_okay=False),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="A safetensors file to store as the `neural_weights` section.", dir_okay=False
    ),
    training_data: Optional[Path] = typer.Option(
        None, "--training-data", help="A safetensors file to store as the `training_data` section.", dir_okay=False
    ),
    raw: bool = typer.Option(False, "--raw", help="Store the packed sections as raw zstd bytes instead of base64 text."),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Write here instead of replacing PATH in place.", dir_okay=False
    ),
    fmt: str = typer.Option("full", "--format", help="Diagnostics as full, concise or json (json: a summary on stdout)."),
    max_section_bytes: int = typer.Option(
        _DEFAULT_MAX_SECTION_BYTES, "--max-section-bytes", min=1, help="Refuse any section larger than this once decompressed."
    ),
) -> None:
    """Replace or add the neural_weights and training_data sections of an .af file.

    The header text and the other sections are kept. The new file must validate, or nothing is
    written; it replaces PATH atomically (or goes to -o). Exit 0 when written, 1 when the result
    would be invalid, 2 for a usage error (bad flags, unreadable file).
    """
    import afc
    from afcore.errors import UsageError

    if fmt not in ("full", "concise", "json"):
        raise UsageError(f"unknown format `{fmt}`", code="AF0900", hint="use --format full, concise or json")
    result = afc.pack(path, weights=weights, training_data=training_data, raw=raw, output=output,
                      max_section_bytes=max_section_bytes)
    if fmt == "json":
        stdout.print(json.dumps(result.to_json()), markup=False, highlight=False)
    else:
        console.print(f"packed {', '.join(result.sections)} into {result.path} ({result.size} bytes)",
                      markup=False, highlight=False)
