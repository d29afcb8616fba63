"""`af unpack`: write an .af file's header and sections out as files (docs/cli.md, section `af unpack`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._app import command
from ._output import emit, say
from .validate import DEFAULT_MAX_SECTION_BYTES, FORMATS


@command("unpack")
@click.argument("path", metavar="PATH", type=click.Path(path_type=Path))
@click.option("-o", "--output", "outdir", required=True, metavar="OUTDIR", type=click.Path(path_type=Path),
              help="Directory to write into (created if missing).")
@click.option("--force", is_flag=True,
              help="Write into OUTDIR even if it is not empty, overwriting files of the same names.")
@click.option("--format", "fmt", default="full", show_default=True, type=click.Choice(FORMATS),
              help="Diagnostics as full, concise or json (json: the files on stdout).")
@click.option("--max-section-bytes", default=DEFAULT_MAX_SECTION_BYTES, show_default=True,
              type=click.IntRange(min=1), help="Refuse any section larger than this once decompressed.")
def unpack_command(path: Path, *, outdir: Path, force: bool, fmt: str, max_section_bytes: int) -> None:
    """Write header.yaml and one file per section: <name>.safetensors for tensor sections, <name>.bin for others.

    Payloads are written as stored (decompressed, not converted). Only the container is checked, so
    a file with schema or shape errors can still be unpacked. Refuses a non-empty OUTDIR unless
    --force. Exit 0 when written, 1 when the container is broken, 2 for a usage error.
    """
    from afc import TENSOR_SECTIONS, read_container
    from afcore.fsutil import write_file_atomic
    from afcore.errors import UsageError

    from ._files import read_checked

    data = read_checked(path, ("agent",), "af unpack")
    container = read_container(data, path=str(path), max_section_bytes=max_section_bytes)
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
        emit(json.dumps(listing))
        return
    for file, _, content in files:
        say(f"wrote {file} ({len(content)} bytes)")
    say(f"unpacked {path}: header and {len(files) - 1} section(s)")
