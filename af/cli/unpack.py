"""`af unpack`: write an .af file's header and sections out as files (docs/cli.md, section `af unpack`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ._app import command, console, stdout

#: what `--max-section-bytes` defaults to (afc.reader.DEFAULT_MAX_SECTION_BYTES, repeated to keep `--help` light)
_DEFAULT_MAX_SECTION_BYTES = 2 * 1024**3


@command("unpack")
def unpack_command(
    path: Path = typer.Argument(..., metavar="PATH", help="The .af file to unpack.", dir_okay=False),
    outdir: Path = typer.Option(..., "-o", "--output", help="Directory to write into (created if missing).", file_okay=False),
    force: bool = typer.Option(
        False, "--force", help="Write into OUTDIR even if it is not empty, overwriting files of the same names."
    ),
    fmt: str = typer.Option("full", "--format", help="Diagnostics as full, concise or json (json: the files on stdout)."),
    max_section_bytes: int = typer.Option(
        _DEFAULT_MAX_SECTION_BYTES, "--max-section-bytes", min=1, help="Refuse any section larger than this once decompressed."
    ),
) -> None:
    """Write header.yaml and one file per section: <name>.safetensors for tensor sections, <name>.bin for others.

    Payloads are written as stored (decompressed, not converted). Only the container is checked, so
    a file with schema or shape errors can still be unpacked. Refuses a non-empty OUTDIR unless
    --force. Exit 0 when written, 1 when the container is broken, 2 for a usage error.
    """
    from afc.agentfile import read_agent_bytes
    from afc.reader import read_container
    from afc.tensors import TENSOR_SECTIONS
    from afc.writer import write_file_atomic
    from afcore.errors import UsageError

    if fmt not in ("full", "concise", "json"):
        raise UsageError(f"unknown format `{fmt}`", code="AF0900", hint="use --format full, concise or json")
    container = read_container(read_agent_bytes(path), path=str(path), max_section_bytes=max_section_bytes)
    _prepare(outdir, force)
    files = [(outdir / "header.yaml", "header", container.header_text.encode("utf-8"))]
    for section in container.sections:
        suffix = ".safetensors" if section.name in TENSOR_SECTIONS else ".bin"
        files.append((outdir / f"{section.name}{suffix}", section.name, section.payload))
    for file, _, content in files:
        try:
            write_file_atomic(file, content)
        except OSError as exc:
            raise UsageError(f"cannot write `{file}`: {exc.strerror or exc}", code="AF0914") from None
    _report(path, files, fmt)


def _prepare(outdir: Path, force: bool) -> None:
    """Create ``outdir``, or check that it may be written into."""
    from afcore.errors import UsageError

    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"`{outdir}` is not a directory", code="AF0913", hint="give a directory with -o")
    if outdir.is_dir() and any(outdir.iterdir()) and not force:
        raise UsageError(
            f"`{outdir}` is not empty", code="AF0913", hint="choose an empty directory, or pass --force to overwrite"
        )
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create `{outdir}`: {exc.strerror or exc}", code="AF0913") from None


def _report(path: Path, files: list[tuple[Path, str, bytes]], fmt: str) -> None:
    if fmt == "json":
        listing = [{"section": name, "path": str(file), "bytes": len(content)} for file, name, content in files]
        stdout.print(json.dumps(listing), markup=False, highlight=False)
        return
    for file, _, content in files:
        console.print(f"wrote {file} ({len(content)} bytes)", markup=False, highlight=False)
    console.print(f"unpacked {path}: header and {len(files) - 1} section(s)", markup=False, highlight=False)
