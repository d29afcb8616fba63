"""The typer app, the one console, and the one way a command reports an error.

Every command is registered with `command`, which renders any `AfError` as diagnostics on
stderr and exits with the error's exit code (1, or 2 for usage errors). Any other exception is a
bug in af: it is shown as a traceback (with locals when ``AF_DEBUG=1``) and exits 70. The
consoles and that mapping live in `_output`, which the typer-free fast path of `af run` shares.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NoReturn

import typer

from afcore import __version__

from ._output import EXIT_INTERNAL as EXIT_INTERNAL
from ._output import console as console
from ._output import handle_error
from ._output import report_error as report_error
from ._output import stdout as stdout

app = typer.Typer(
    name="af",
    help="Compile, inspect and run declarative neural agents (.af files).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def abort(text: str, code: int = 1) -> NoReturn:
    """Print ``text`` as an error and exit with ``code``."""
    console.print(f"[bold red]error[/]: {text}", markup=True, highlight=False)
    raise typer.Exit(code)


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command whose `AfError`s become diagnostics and exit codes.

    A command that takes a ``fmt`` keyword gets its errors rendered in that format.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except (typer.Exit, typer.Abort, KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into reports
                # AfError -> diagnostics and its exit code; BrokenPipeError -> 0; a bug -> traceback, 70
                raise typer.Exit(handle_error(exc, kw.get("fmt") or "full")) from None

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
