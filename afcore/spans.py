"""Source positions: `Span` (1-based line and column) and `SourceFile` (text plus a line index)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["SourceFile", "Span"]


@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file. ``line``/``column`` are 1-based; the end is exclusive.

    Columns count characters (code points), as editors do.
    """

    path: str
    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None

    def to_json(self) -> dict[str, object]:
        """Return the span as plain JSON data."""
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Span:
        """Rebuild a span written by `to_json`."""
        return cls(
            str(data["path"]),
            int(data["line"]),  # type: ignore[arg-type]
            int(data["column"]),  # type: ignore[arg-type]
            data.get("end_line"),  # type: ignore[arg-type]
            data.get("end_column"),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class SourceFile:
    """The text of one source file with an index from offsets to lines.

    Args:
        path: the path shown to the user.
        text: the decoded text (a BOM already stripped).
    """

    path: str
    text: str
    _line_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0]
        find = self.text.find
        pos = find("\n")
        while pos != -1:
            starts.append(pos + 1)
            pos = find("\n", pos + 1)
        object.__setattr__(self, "_line_starts", tuple(starts))

    @property
    def line_count(self) -> int:
        """Return the number of lines."""
        return len(self._line_starts)

    def line_text(self, line: int) -> str:
        """Return line ``line`` (1-based) without its line ending."""
        if not 1 <= line <= len(self._line_starts):
            return ""
        start = self._line_starts[line - 1]
        end = self._line_starts[line] if line < len(self._line_starts) else len(self.text)
        return self.text[start:end].rstrip("\r\n")

    def position(self, offset: int) -> tuple[int, int]:
        """Return the 1-based (line, column) of a 0-based character offset."""
        offset = max(0, min(offset, len(self.text)))
        index = bisect.bisect_right(self._line_starts, offset) - 1
        return index + 1, offset - self._line_starts[index] + 1

    def span(self, start: int, end: int | None = None) -> Span:
        """Return the span between two 0-based character offsets."""
        line, column = self.position(start)
        if end is None:
            return Span(self.path, line, column)
        end_line, end_column = self.position(end)
        return Span(self.path, line, column, end_line, end_column)
