"""`af validate`: check .af files and report every diagnostic (docs/cli.md, section `af validate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._app import command
from ._output import emit, say

if TYPE_CHECKING:
    from afcore.diagnostics import Diagnostic
    from afcore.spans import SourceFile

#: the diagnostic formats every command with ``--format`` accepts
FORMATS = ("full", "concise", "json")
#: what `--max-section-bytes` defaults to (afc.reader.DEFAULT_MAX_SECTION_BYTES, repeated to keep `--help` import-light)
DEFAULT_MAX_SECTION_BYTES = 2 * 1024**3


@command("validate")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--format", "fmt", default="full", show_default=True, type=click.Choice(FORMATS),
              help="Diagnostics as full (source frames), concise or json.")
@click.option("--max-section-bytes", default=DEFAULT_MAX_SECTION_BYTES, show_default=True,
              type=click.IntRange(min=1), help="Refuse any section that decompresses to more bytes than this.")
def validate_command(paths: tuple[Path, ...], *, fmt: str, max_section_bytes: int) -> None:
    """Check .af files: framing, YAML, schema, steps and meaning.

    Exit 0 when every file is valid (warnings allowed), 1 when any is not, 2 when a file cannot
    be read or is not an .af file (a bundle, say), or for another usage error.
    """
    records: list[dict] = []
    code = 0
    for path in paths:
        diagnostics, data, file_code = _validate(path, max_section_bytes)
        errors = sum(d.is_error for d in diagnostics)
        code = max(code, file_code)
        if fmt == "json":
            # a diagnostic about the file as a whole (unreadable, not an .af file) has no span: name the file
            records += [{**d.to_json(), "path": d.span.path if d.span else str(path)} for d in diagnostics]
            continue
        if diagnostics:
            from afcore.diagnostics import render

            say(render(diagnostics, fmt, _sources(str(path), data, diagnostics)) + ("\n" if fmt == "full" else ""))
        _summary(str(path), errors, len(diagnostics) - errors)
    if fmt == "json":
        import json

        emit(json.dumps(records, indent=2, ensure_ascii=False))
    if code:
        raise click.exceptions.Exit(code)


def _validate(path: Path, max_section_bytes: int) -> tuple[list[Diagnostic], bytes, int]:
    """Return the diagnostics of one file, its bytes and its exit code (0 valid, 1 invalid).

    A file that cannot be read, or is not an .af file, gets one diagnostic (AF0901, AF0904) and
    the exit code of a usage error (2).
    """
    from afc import validate_bytes
    from afcore.diagnostics import Diagnostic
    from afcore.errors import UsageError

    from ._files import SNIFF_BYTES, ensure_kind, read_input, sniff_kind

    try:
        data = read_input(path)
        ensure_kind(path, sniff_kind(data), ("agent",), "af validate")
    except UsageError as error:
        return [Diagnostic(error.code, "error", error.message, help=error.hint)], b"", error.exit_code
    diagnostics = validate_bytes(data, path=str(path), max_section_bytes=max_section_bytes)
    return diagnostics, data, int(any(d.is_error for d in diagnostics))


def _summary(path: str, errors: int, others: int) -> None:
    extra = f" ({others} warning{'s' if others != 1 else ''})" if others else ""
    if errors:
        say(f"{path}: {errors} error{'s' if errors != 1 else ''}{extra}")
    else:
        say(f"{path}: valid{extra}")


def _sources(path: str, data: bytes, diagnostics: list[Diagnostic]) -> dict[str, SourceFile]:
    """Decode only the lines the diagnostics point at: a file may hold gigabytes of sections."""
    from afcore.spans import SourceFile

    last = max((d.span.line for d in diagnostics if d.span is not None), default=0)
    end = 0
    for _ in range(last):
        found = data.find(b"\n", end)
        if found == -1:
            end = len(data)
            break
        end = found + 1
    text = data[:end].decode("utf-8", errors="replace").removeprefix("\ufeff")
    return {path: SourceFile(path, text)}
