"""The typer app, the one console, and the one way a command reports an error.

Every command is registered with `command`, which renders any `AfError` as diagnostics on
stderr and exits with the error's exit code (1, or 2 for usage errors). Any other exception is a
bug in af: it is shown as a traceback (with locals when ``AF_DEBUG=1``) and exits 70.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, NoReturn

import typer
from rich.console import Console

from afcore import __version__
from afcore.errors import AfError

#: exit code for a bug in af (sysexits EX_SOFTWARE)
EXIT_INTERNAL = 70

app = typer.Typer(
    name="af",
    help="Compile, inspect and run declarative neural agents (.af files).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: all human-facing output goes to stderr through here; stdout is kept for data (JSON, JSONL)
console = Console(stderr=True, highlight=False, soft_wrap=True)
#: data written to stdout (JSON for scripts)
stdout = Console(highlight=False, soft_wrap=True)


def abort(text: str, code: int = 1) -> NoReturn:
    """Print ``text`` as an error and exit with ``code``."""
    console.print(f"[bold red]error[/]: {text}", markup=True, highlight=False)
    raise typer.Exit(code)


def report_error(error: AfError, fmt: str = "full") -> int:
    """Render an `AfError` on stderr (JSON on stdout for ``fmt == "json"``) and return its exit code."""
    from afcore.diagnostics import render

    diagnostics = error.to_diagnostics()
    if fmt == "json":
        stdout.print(render(diagnostics, "json"), markup=False, highlight=False)
    else:
        console.print(render(diagnostics, fmt if fmt in ("full", "concise") else "full"), markup=False)
    return error.exit_code


def _report_bug(exc: BaseException) -> NoReturn:
    from rich.traceback import Traceback

    show_locals = os.environ.get("AF_DEBUG") == "1"
    console.print(Traceback.from_exception(type(exc), exc, exc.__traceback__, show_locals=show_locals))
    console.print(
        "[bold red]internal error[/]: this is a bug in af, please report it with the traceback above"
        + ("" if show_locals else " (set AF_DEBUG=1 to include local variables)")
    )
    raise typer.Exit(EXIT_INTERNAL)


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command whose `AfError`s become diagnostics and exit codes.

    A command that takes a ``fmt`` keyword gets its errors rendered in that format.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except AfError as error:
                raise typer.Exit(report_error(error, kw.get("fmt") or "full")) from None
            except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
                raise
            except BrokenPipeError:
                # The reader went away (`af run ... | head`): not an error of ours.
                sys.stderr.close()
                raise typer.Exit(0) from None
            except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into reports
                _report_bug(exc)

        app.command(name, **kwargs)(run)
        return fn

    return decorate


def _version(value: bool) -> None:
    if value:
        print(f"af {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Compile, inspect and run declarative neural agents (.af files).

    Exit codes: 0 success, 1 the input was invalid or the work failed (diagnostics on stderr),
    2 usage error, 70 internal error (a bug in af).
    """
