"""`af pack`: put safetensors files into an .af file's sections (docs/cli.md, section `af pack`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import click

from ._app import command
from ._output import emit, say
from .validate import DEFAULT_MAX_SECTION_BYTES, FORMATS

if TYPE_CHECKING:
    from afc.reader import Container

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
    from afc.agentfile import load_agent_bytes
    from afc.reader import read_container
    from afc.writer import write_container

    from ._files import check_output, read_checked

    new = _new_payloads(weights, training_data)
    data = read_checked(path, ("agent",), "af pack")
    container = read_container(data, path=str(path), max_section_bytes=max_section_bytes, skip_payloads=new)
    sections = _merge(container, new)
    raw_names = {n for n, _ in sections if (n in new and raw) or (n not in new and _encoding(container, n) == "raw")}
    result = write_container(container.header_text, sections, raw=raw_names, newline=container.newline, bom=container.bom)
    target = check_output(output, create_parents=False) if output is not None else path
    load_agent_bytes(result, path=str(target), max_section_bytes=max_section_bytes)  # refuse to write an invalid file
    _write(target, result)
    _report(target, new, raw, len(result), fmt)


def _write(target: Path, data: bytes) -> None:
    """Write atomically, turning an OS refusal (no such directory, read-only, disk full) into AF0914."""
    from afc.writer import write_file_atomic
    from afcore.errors import UsageError

    try:
        write_file_atomic(target, data)
    except OSError as exc:
        raise UsageError(f"cannot write `{target}`: {exc.strerror or exc}", code="AF0914",
                         hint="check that the directory exists and is writable") from None


def _new_payloads(weights: Path | None, training_data: Path | None) -> dict[str, bytes]:
    """Read and check the given safetensors files; return their bytes by section name."""
    from afcore.errors import UsageError

    from ._files import read_input

    given = {"neural_weights": weights, "training_data": training_data}
    new = {name: read_input(file) for name, file in given.items() if file is not None}
    if not new:
        raise UsageError("nothing to pack", code="AF0912", hint="give --weights FILE and/or --training-data FILE")
    for name, payload in new.items():
        _check_tensors(name, payload, given[name])
    return new


def _check_tensors(name: str, payload: bytes, file: Path | None) -> None:
    """Raise `CheckError` when ``payload`` is not a safetensors file of accepted dtypes."""
    from afc.reader import RawSection
    from afc.tensors import decode_tensors
    from afcore.errors import CheckError
    from afcore.spans import Span

    _, diagnostics = decode_tensors(RawSection(name, "raw", payload, Span(str(file), 1, 1), 0))
    if any(d.is_error for d in diagnostics):
        # A binary file has no source lines to frame: name the file in the message instead.
        placeless = [replace(d, span=None, message=f"{file}: {d.message}") for d in diagnostics]
        raise CheckError(placeless)


def _merge(container: Container, new: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Keep the sections in file order with the new payloads in place; append the new ones."""
    sections = [(s.name, new.get(s.name, s.payload)) for s in container.sections]
    present = {s.name for s in container.sections}
    return sections + [(name, payload) for name, payload in new.items() if name not in present]


def _encoding(container: Container, name: str) -> str | None:
    section = container.section(name)
    return section.encoding if section is not None else None


def _report(target: Path, new: dict[str, bytes], raw: bool, size: int, fmt: str) -> None:
    if fmt == "json":
        summary = {"path": str(target), "bytes": size, "sections": sorted(new), "encoding": "raw" if raw else "base64"}
        emit(json.dumps(summary))
        return
    names = ", ".join(sorted(new))
    say(f"packed {names} into {target} ({size} bytes)")
