"""Where `af` prints, and how an exception from a command body becomes an exit code.

Plain lines go straight to the streams: `say` (stderr, for people) and `emit` (stdout, data).
rich is imported only for what it draws: tables (`console`) and the traceback of a bug.
"""

from __future__ import annotations

import os
import sys
from typing import Any

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


def console() -> Any:
    """Return a rich Console on stderr, for tables (made per call: the streams change under tests)."""
    from rich.console import Console

    return Console(file=sys.stderr, highlight=False, soft_wrap=False)


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
    from rich.traceback import Traceback

    show_locals = os.environ.get("AF_DEBUG") == "1"
    out = console()
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
