"""Diagnostics and their three renderings: full (rustc/ruff style), concise and JSON.

A full diagnostic looks like this::

    error[AF1002]: `layers[1]` must be an integer
     --> examples/summarizer.af:14:18
       |
    14 |     layers: [64, two, 32]
       |                  ^^^ found string
       |
       = help: layer sizes are positive integers
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

from .spans import SourceFile, Span

__all__ = [
    "Diagnostic",
    "Label",
    "Severity",
    "render",
    "render_concise",
    "render_full",
    "render_json",
    "sort_diagnostics",
]

Severity = Literal["error", "warning", "note"]

#: the renderings `--format` accepts
FORMATS = ("full", "concise", "json")


@dataclass(frozen=True)
class Label:
    """A secondary span with a short message, drawn with `-` under the source."""

    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    """One finding about a source file or a record.

    Args:
        code: stable identifier such as ``AF1002`` (see docs/diagnostics.md).
        severity: ``error``, ``warning`` or ``note``.
        message: starts lowercase, no trailing period, states the fault.
        span: where the fault is, or None when it has no place in a file.
        label: text printed beside the carets under the primary span.
        labels: secondary spans.
        help: how to fix it (rendered as ``= help:``; ``hint`` in JSON).
        notes: further context lines.
    """

    code: str
    severity: Severity
    message: str
    span: Span | None = None
    label: str | None = None
    labels: tuple[Label, ...] = ()
    help: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def is_error(self) -> bool:
        """Return True for error severity."""
        return self.severity == "error"

    def to_json(self) -> dict[str, object]:
        """Return the JSON record of `af validate --format json`."""
        span = self.span
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "path": span.path if span else None,
            "line": span.line if span else None,
            "column": span.column if span else None,
            "hint": self.help,
        }


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Return the diagnostics sorted by file and position, placeless ones first, stably."""

    def key(d: Diagnostic) -> tuple:
        if d.span is None:
            return ("", 0, 0)
        return (d.span.path, d.span.line, d.span.column)

    return sorted(diagnostics, key=key)


def render_concise(diagnostic: Diagnostic) -> str:
    """Render as ``path:line:col: AF1002 message``."""
    span = diagnostic.span
    where = f"{span.path}:{span.line}:{span.column}: " if span else ""
    return f"{where}{diagnostic.code} {diagnostic.message}"


def _load_source(path: str, sources: Mapping[str, SourceFile]) -> SourceFile | None:
    source = sources.get(path)
    if source is not None:
        return source
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    text = raw.decode("utf-8", errors="replace")
    return SourceFile(path, text.removeprefix("\ufeff"))


def _underline(span: Span, line_text: str, mark: str) -> tuple[int, int]:
    start = max(span.column, 1)
    if span.end_line == span.line and span.end_column is not None and span.end_column > start:
        width = span.end_column - start
    elif span.end_line is not None and span.end_line > span.line:
        width = max(len(line_text) - start + 1, 1)
    else:
        width = 1
    return start, width


#: the widest source line a frame shows; a longer one is cut around the caret
MAX_FRAME_CHARS = 160


def _framable(line_text: str) -> bool:
    """Whether a source line can be shown (text, not the undecodable bytes of a binary file)."""
    return "\ufffd" not in line_text and "\x00" not in line_text


#: control characters drawn as their Unicode control pictures (one column each, carets stay put)
_CONTROL_PICTURES = {c: 0x2400 + c for c in range(32)} | {0x7F: 0x2421}


def _clip(line_text: str, span: Span) -> tuple[str, Span]:
    """Cut a long line to `MAX_FRAME_CHARS` around the span's start; shift the span to match."""
    if len(line_text) <= MAX_FRAME_CHARS:
        return line_text, span
    begin = max(0, min(span.column - 1 - MAX_FRAME_CHARS // 3, len(line_text) - MAX_FRAME_CHARS))
    shown = line_text[begin : begin + MAX_FRAME_CHARS]
    prefix = "..." if begin else ""
    suffix = "..." if begin + MAX_FRAME_CHARS < len(line_text) else ""
    shift = begin - len(prefix)
    end_column = span.end_column
    if end_column is not None and span.end_line == span.line:
        end_column = min(end_column - shift, len(prefix) + len(shown) + 1)
    moved = Span(span.path, span.line, max(span.column - shift, 1), span.end_line, end_column)
    return prefix + shown + suffix, moved


def render_full(diagnostic: Diagnostic, sources: Mapping[str, SourceFile] | None = None) -> str:
    """Render with a source frame and carets, as rustc and ruff print.

    Args:
        diagnostic: what to render.
        sources: source files by path; a missing one is read from disk if it exists.

    Returns:
        The text, without a trailing newline.
    """
    sources = sources or {}
    out = [f"{diagnostic.severity}[{diagnostic.code}]: {diagnostic.message}"]
    span = diagnostic.span
    source = _load_source(span.path, sources) if span else None
    if span is not None:
        gutter_width = len(str(span.line))
        pad = " " * gutter_width
        out.append(f"{pad}--> {span.path}:{span.line}:{span.column}")
        line_text = source.line_text(span.line).expandtabs(1) if source is not None and \
            1 <= span.line <= source.line_count else None
        if line_text is not None and not _framable(line_text):
            line_text = None  # undecodable bytes (a binary file) would garble the terminal: no frame
        if line_text is not None:
            line_text, span = _clip(line_text.translate(_CONTROL_PICTURES), span)
            start, width = _underline(span, line_text, "^")
            carets = " " * (start - 1) + "^" * width
            label = f" {diagnostic.label}" if diagnostic.label else ""
            out += [f"{pad} |", f"{span.line} | {line_text}", f"{pad} | {carets}{label}"]
            for extra in diagnostic.labels:
                if extra.span.path == span.path and extra.span.line == span.line:
                    s, w = _underline(extra.span, line_text, "-")
                    out.append(f"{pad} | {' ' * (s - 1)}{'-' * w} {extra.message}")
            out.append(f"{pad} |")
        tail_pad = pad
    else:
        tail_pad = ""
    for note in diagnostic.notes:
        out.append(f"{tail_pad} = note: {note}")
    if diagnostic.help:
        out.append(f"{tail_pad} = help: {diagnostic.help}")
    return "\n".join(out)


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    """Render as a JSON list of ``{code, severity, message, path, line, column, hint}``."""
    return json.dumps([d.to_json() for d in diagnostics], indent=2, ensure_ascii=False)


def render(
    diagnostics: Sequence[Diagnostic],
    fmt: str = "full",
    sources: Mapping[str, SourceFile] | None = None,
) -> str:
    """Render diagnostics in one of `FORMATS`.

    Raises:
        ValueError: for an unknown format.
    """
    if fmt == "json":
        return render_json(diagnostics)
    if fmt == "concise":
        return "\n".join(render_concise(d) for d in diagnostics)
    if fmt == "full":
        return "\n\n".join(render_full(d, sources) for d in diagnostics)
    raise ValueError(f"unknown diagnostic format {fmt!r}; use one of {', '.join(FORMATS)}")
