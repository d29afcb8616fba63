"""The consoles of `af`, made on first use, and how an exception from a command body becomes an exit code.

This module imports neither typer nor rich: `af run` on its fast path (`_fastpath`) writes its
summary lines itself when rich would print them unchanged, and imports rich only for what rich
draws (diagnostics, tracebacks, tables) or would alter (emoji codes, control codes, tabs).
``console`` (stderr, for people) and ``stdout`` (data) are rich Consoles created on first access.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

#: exit code for a bug in af (sysexits EX_SOFTWARE)
EXIT_INTERNAL = 70

#: the consoles this module makes on first access: name -> whether it writes to stderr
_CONSOLES = {"console": True, "stdout": False}
#: what `rich.console.Console.print(text, markup=False, highlight=False)` changes in plain text:
#: emoji codes such as ``:smile:`` (any ``:name:`` is taken to be one), the control codes that
#: `rich.text.Text` strips (BEL, BS, VT, FF, CR) and tabs, which it expands
_RICH_CHANGES = re.compile(r":\S*?:|[\x07\x08\x0b\x0c\r\t]")


def __getattr__(name: str) -> Any:
    if name not in _CONSOLES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    value = Console(stderr=_CONSOLES[name], highlight=False, soft_wrap=True)
    globals()[name] = value
    return value


def _get(name: str) -> Any:
    return globals()[name] if name in globals() else __getattr__(name)


def say(text: str) -> None:
    """Print ``text`` on stderr, byte for byte as ``console.print(text, markup=False, highlight=False)``.

    Text that rich would print unchanged (the usual case) is written directly, so that a command
    that only reports a few plain lines does not import rich. (A stream that cannot encode the
    text raises the same UnicodeEncodeError, without the hint rich adds to its reason.)
    """
    if _RICH_CHANGES.search(text):
        _get("console").print(text, markup=False, highlight=False)
        return
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def report_error(error: Any, fmt: str = "full") -> int:
    """Render an `AfError` on stderr (JSON on stdout for ``fmt == "json"``) and return its exit code."""
    from afcore.diagnostics import render

    diagnostics = error.to_diagnostics()
    if fmt == "json":
        _get("stdout").print(render(diagnostics, "json"), markup=False, highlight=False)
    else:
        _get("console").print(render(diagnostics, fmt if fmt in ("full", "concise") else "full"), markup=False)
    return error.exit_code


def report_bug(exc: BaseException) -> int:
    """Show ``exc`` as a bug in af (a traceback, with locals when ``AF_DEBUG=1``) and return `EXIT_INTERNAL`."""
    from rich.traceback import Traceback

    console = _get("console")
    show_locals = os.environ.get("AF_DEBUG") == "1"
    console.print(Traceback.from_exception(type(exc), exc, exc.__traceback__, show_locals=show_locals))
    console.print(
        "[bold red]internal error[/]: this is a bug in af, please report it with the traceback above"
        + ("" if show_locals else " (set AF_DEBUG=1 to include local variables)")
    )
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
