"""`af validate`: check an .af file and report every diagnostic (docs/cli.md, section `af validate`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ._app import command, console, stdout

if TYPE_CHECKING:
    from afcore.diagnostics import Diagnostic
    from afcore.spans import SourceFile

#: what `--max-section-bytes` defaults to (afc.reader.DEFAULT_MAX_SECTION_BYTES, repeated to keep `--help` import-light)
_DEFAULT_MAX_SECTION_BYTES = 2 * 1024**3


@command("validate")
def validate_command(
    path: Path = typer.Argument(..., metavar="PATH", help="The .af file to check.", dir_okay=False),
    fmt: str = typer.Option("full", "--format", help="Diagnostics as full (source frames), concise or json."),
    max_section_bytes: int = typer.Option(
        _DEFAULT_MAX_SECTION_BYTES, "--max-section-bytes", min=1,
        help="Refuse any section that decompresses to more bytes than this.",
    ),
) -> None:
    """Check an .af file: framing, YAML, schema, steps and meaning. Exit 0 when valid (warnings allowed), 1 when not."""
    from afc.agentfile import read_agent_bytes, validate_bytes
    from afcore.errors import UsageError

    if fmt not in ("full", "concise", "json"):
        raise UsageError(f"unknown format `{fmt}`", code="AF0900", hint="use --format full, concise or json")
    data = read_agent_bytes(path)
    diagnostics = validate_bytes(data, path=str(path), max_section_bytes=max_section_bytes)
    _print(diagnostics, fmt, _sources(str(path), data, diagnostics))
    errors = sum(d.is_error for d in diagnostics)
    if fmt != "json":
        _summary(str(path), errors, len(diagnostics) - errors)
    if errors:
        raise typer.Exit(1)


def _print(diagnostics: list[Diagnostic], fmt: str, sources: dict[str, SourceFile]) -> None:
    from afcore.diagnostics import render

    if fmt == "json":
        stdout.print(render(diagnostics, "json"), markup=False, highlight=False)
    elif diagnostics:
        console.print(render(diagnostics, fmt, sources) + ("\n" if fmt == "full" else ""), markup=False,
                      highlight=False)


def _summary(path: str, errors: int, others: int) -> None:
    extra = f" ({others} warning{'s' if others != 1 else ''})" if others else ""
    if errors:
        console.print(f"{path}: {errors} error{'s' if errors != 1 else ''}{extra}", markup=False, highlight=False)
    else:
        console.print(f"{path}: valid{extra}", markup=False, highlight=False)


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
