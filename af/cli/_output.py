"""Where `af` prints, and how an exception from a command body becomes an exit code.

Plain lines go straight to the streams: `say` (stderr, for people) and `emit` (stdout, data);
`print_table` lays out the tables of `af compile`, `af inspect` and `af profile` in the terminal's
width. rich is imported only to draw the traceback of a bug.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

#: exit code for a bug in af (sysexits EX_SOFTWARE)
EXIT_INTERNAL = 70


def say(text: str) -> None:
    """Print one line (or several) of text for people, on stderr, as it is."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def emit(text: str) -> None:
    """Print data (JSON, an intermediate form) on stdout, as it is."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def terminal_width() -> int:
    """Return the width tables must fit: ``COLUMNS``, else stderr's terminal, else 80."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 80


#: the space between two columns of a table
GAP = "  "


def fit_columns(columns: Sequence[str], rows: Sequence[Sequence[str]], drop_order: Sequence[str],
                width: int) -> list[str]:
    """Return the columns to show so that the table fits in ``width`` without wrapping a cell.

    Columns are left out in ``drop_order`` until the table fits; an empty list means that even
    the fewest columns do not fit (`print_table` prints the rows stacked instead).
    """
    def table_width(shown: list[str]) -> int:
        widths = [max([len(c), *(len(row[columns.index(c)]) for row in rows)]) for c in shown]
        return sum(widths) + len(GAP) * (len(shown) - 1)

    shown = list(columns)
    for column in (None, *drop_order):
        if column is not None:
            shown.remove(column)
        if table_width(shown) <= width:
            return shown
    return []


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *,
                left: Sequence[str] = (), drop_order: Sequence[str] = ()) -> None:
    """Print a table on stderr: a title, a header and aligned rows, fitting the terminal's width.

    Columns in ``left`` are text (left-aligned), the others numbers. When the table is too wide,
    columns are left out in ``drop_order`` (a line names them) rather than a cell being wrapped;
    if even that is too wide, each row is printed on a line of its own as ``column value`` pairs.
    """
    shown = fit_columns(columns, rows, drop_order, terminal_width())
    if not shown:
        say(title)
        for row in rows:
            say("  " + ", ".join(f"{c} {v}" for c, v in zip(columns, row) if v))
        return
    index = [columns.index(c) for c in shown]
    widths = [max([len(columns[i]), *(len(row[i]) for row in rows)]) for i in index]

    def line(cells: Sequence[str]) -> str:
        return GAP.join(cell.ljust(w) if columns[i] in left else cell.rjust(w)
                        for cell, w, i in zip(cells, widths, index)).rstrip()

    lines = [title, line([columns[i] for i in index]), GAP.join("-" * w for w in widths)]
    lines += [line([row[i] for i in index]) for row in rows]
    left_out = [c for c in columns if c not in shown]
    if left_out:
        lines.append(f"(left out to fit: {', '.join(left_out)}; --json has every column)")
    say("\n".join(lines))


def report_error(error: Any, fmt: str = "full") -> int:
    """Render an `AfError` on stderr (JSON on stdout for ``fmt == "json"``, on stderr for ``"json-stderr"``)
    and return its exit code.

    An error about a file given on the command line (``error.path``, set by `_files`) keeps that path
    in JSON, where a diagnostic without a place in the file would have ``"path": null``.
    """
    from afcore.diagnostics import render

    diagnostics = error.to_diagnostics()
    if fmt in ("json", "json-stderr"):
        import json

        records = [d.to_json() for d in diagnostics]
        path = getattr(error, "path", None)
        for record in records:
            if record["path"] is None and path is not None:
                record["path"] = path
        (emit if fmt == "json" else say)(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        say(render(diagnostics, fmt if fmt in ("full", "concise") else "full"))
    return error.exit_code


def report_bug(exc: BaseException) -> int:
    """Show ``exc`` as a bug in af (a traceback, with locals when ``AF_DEBUG=1``) and return `EXIT_INTERNAL`."""
    from rich.console import Console
    from rich.traceback import Traceback

    show_locals = os.environ.get("AF_DEBUG") == "1"
    out = Console(file=sys.stderr, highlight=False)
    out.print(Traceback.from_exception(type(exc), exc, exc.__traceback__, show_locals=show_locals))
    say("internal error: this is a bug in af, please report it with the traceback above"
        + ("" if show_locals else " (set AF_DEBUG=1 to include local variables)"))
    return EXIT_INTERNAL


def handle_error(exc: Exception, fmt: str = "full") -> int:
    """Report an exception that escaped a command body and return the exit code for it.

    An `AfError` becomes diagnostics (in ``fmt``) and its own exit code (1, or 2 for usage errors).
    A broken pipe means the reader went away (`af run ... | head`): not an error of ours, exit 0.
    Anything else is a bug in af: a traceback and `EXIT_INTERNAL`.
    """
    from afcore.errors import AfError

    if isinstance(exc, AfError):
        return report_error(exc, fmt)
    if isinstance(exc, BrokenPipeError):
        sys.stderr.close()
        return 0
    return report_bug(exc)
