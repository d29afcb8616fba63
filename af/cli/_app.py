"""The typer app, the one console, and the one way a command reports an error.

Every command is registered with `command`, which renders any `AfError` as diagnostics on
stderr and exits with the error's exit code (1, or 2 for usage errors). Any other exception is a
bug in af: it is shown as a traceback (with locals when ``AF_DEBUG=1``) and exits 70.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from afcore import __version__
from afcore.errors import AfError

#: exit code for a bug in af (sysexits EX_SOFTWARE)
EXIT_INTERNAL = 70

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

        kwargs.setdefault("cls", _PlainCoercionCommand)
        app.command(name, **kwargs)(run)
        return fn

    return decorate


class _PlainCoercion:
    """Coerces a command's plain bool/str/int/float/Path parameters without pydantic.

    typer coerces every parameter through a pydantic ``TypeAdapter``: importing pydantic and
    building the adapters costs ~50 ms, a fifth of `af run`'s start-up. Here a value typer would
    accept unchanged (a bool, a str, a plain decimal int within its bounds, a float default, a
    path string) is converted directly; anything else goes to typer's own coercion, so that
    errors and their messages stay typer's. Internals that moved in another typer release only
    turn this off.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        for param in self.get_params(ctx):
            _preset_coercion(param)
        return super().parse_args(ctx, args)  # type: ignore[misc]


class _PlainCoercionCommand(_PlainCoercion, TyperCommand):
    """A `TyperCommand` with `_PlainCoercion`."""


class _PlainCoercionGroup(_PlainCoercion, TyperGroup):
    """A `TyperGroup` (the `af` app itself) with `_PlainCoercion`."""


def _preset_coercion(param: Any) -> None:
    desc = getattr(param, "type_descriptor", None)
    if desc is None or getattr(param, "_runtime_param", False) is not None:
        return
    info = desc.parameter_info
    plain = desc.annotation in (bool, str, int, float, Path) and desc.file_annotation is None
    if plain and getattr(info, "parser", 1) is None and not getattr(info, "clamp", True):
        try:
            param._runtime_param = _plain_coercion(desc)
        except (ImportError, TypeError, AttributeError):  # another typer: keep its coercion
            pass


def _plain_coercion(desc: Any) -> Any:
    from dataclasses import dataclass

    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_path

    @dataclass(frozen=True)
    class PlainRuntimeParam(RuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind, info = self.annotation, self.parameter_info
            if (kind is str or kind is bool) and type(value) is kind:
                return value
            if kind is Path and type(value) is str and value and info.path_type is None:
                return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
            if kind is int and type(value) is str and _is_decimal(value):
                value = int(value)
            if type(value) is kind and kind in (int, float) and _within(value, info.min, info.max):
                return value
            return build_runtime_param(desc)._coerce_value(value, param=param, ctx=ctx)

    return PlainRuntimeParam(parameter_info=desc.parameter_info, annotation=desc.annotation)


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) < 19 and (text == "0" or text[0] != "0")


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


app = typer.Typer(
    name="af",
    help="Compile, inspect and run declarative neural agents (.af files).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=_PlainCoercionGroup,
)


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
