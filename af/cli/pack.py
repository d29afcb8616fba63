"""`af pack`: put safetensors files into an .af file's sections (docs/cli.md, section `af pack`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ._app import command
from ._output import emit, say
from .validate import DEFAULT_MAX_SECTION_BYTES, FORMATS


@command("pack")
@click.argument("path", metavar="PATH", type=click.Path(path_type=Path))
@click.option("--weights", type=click.Path(path_type=Path),
              help="A safetensors file to store as the `neural_weights` section.")
@click.option("--training-data", type=click.Path(path_type=Path),
              help="A safetensors file to store as the `training_data` section.")
@click.option("--raw", is_flag=True, help="Store the packed sections as raw zstd bytes instead of base64 text.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here instead of replacing PATH in place.")
@click.option("--format", "fmt", default="full", show_default=True, type=click.Choice(FORMATS),
              help="Diagnostics as full, concise or json (json: a summary on stdout).")
@click.option("--max-section-bytes", default=DEFAULT_MAX_SECTION_BYTES, show_default=True,
              type=click.IntRange(min=1), help="Refuse any section larger than this once decompressed.")
def pack_command(path: Path, *, weights: Optional[Path], training_data: Optional[Path], raw: bool,
                 output: Optional[Path], fmt: str, max_section_bytes: int) -> None:
    """Replace or add the neural_weights and training_data sections of an .af file.

    The header text and the other sections are kept. The new file must validate, or nothing is
    written; it replaces PATH atomically (or goes to -o). Exit 0 when written, 1 when the result
    would be invalid, 2 for a usage error (bad flags, unreadable file).
    """
    import afc

    from ._files import check_output, read_checked, read_head

    read_checked(path, ("agent",), "af pack")
    for given in (weights, training_data):
        if given is not None:
            read_head(given)  # AF0901 for a file that cannot be read; afc.pack checks what it holds
    if output is not None:
        check_output(output, create_parents=False)
    result = afc.pack(path, weights=weights, training_data=training_data, raw=raw, output=output,
                      max_section_bytes=max_section_bytes)
    if fmt == "json":
        emit(json.dumps(result.to_json()))
    else:
        say(f"packed {', '.join(result.sections)} into {result.path} ({result.size} bytes)")
