"""The `af` click group, the one way a command reports an error, and `abort`.

The group loads each command's module when the command is used (click's LazyGroup pattern), so
that `af --help` and `af validate` import neither onnxruntime nor wasmtime. Every command is an
`AfCommand`: an `AfError` from its body is rendered as diagnostics (in the command's ``--format``,
or JSON with ``--json``) and exits with the error's code (1, or 2 for usage errors); any other
exception is a bug in af, shown as a traceback (with locals when ``AF_DEBUG=1``), exit 70.
Ctrl-C exits 130, as a shell reports SIGINT.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NoReturn, Optional

import click

from afcore import __version__

from ._output import EXIT_INTERNAL as EXIT_INTERNAL
from ._output import handle_error, say

#: exit code after Ctrl-C (128 + SIGINT)
EXIT_SIGINT = 130
#: what every command accepts as its help flags
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def abort(text: str, code: int = 1) -> NoReturn:
    """Print ``text`` as an error and exit with ``code``."""
    say(f"error: {text}")
    raise click.exceptions.Exit(code)


def error_format(params: dict[str, Any]) -> str:
    """Return the format a command's errors are rendered in: ``--format``, or JSON for ``--json``.

    `af run --json` prints its summary on stderr (stdout carries the records): its errors go there too.
    """
    if params.get("as_json"):
        return "json"
    if params.get("json_summary"):
        return "json-stderr"
    return params.get("fmt") or "full"


class AfCommand(click.Command):
    """A command whose `AfError`s become diagnostics and exit codes (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            say("")  # the shell's ^C leaves the cursor on its line
            raise click.exceptions.Exit(EXIT_SIGINT) from None
        except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into reports
            raise click.exceptions.Exit(handle_error(exc, error_format(ctx.params))) from None


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], AfCommand]:
    """Declare an `af` command (an `AfCommand` with ``-h``/``--help``)."""
    return click.command(name, cls=AfCommand, context_settings=CONTEXT_SETTINGS, **kwargs)  # type: ignore[return-value]


class LazyGroup(click.Group):
    """A group whose commands live in modules imported on first use (click docs, "Lazily Loading Subcommands").

    Args:
        lazy_commands: command name -> ``"module:attribute"``, in the order `--help` lists them.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.lazy_commands, *(name for name in super().list_commands(ctx) if name not in self.lazy_commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attribute = target.split(":")
        found = getattr(importlib.import_module(module), attribute)
        if not isinstance(found, click.Command):
            raise TypeError(f"{target} is not a click command")
        return found


def make_app(modules: tuple[str, ...]) -> LazyGroup:
    """Return the `af` group with one command per module of ``modules`` (``af.cli.<name>:<name>_command``)."""
    lazy = {name: f"{__package__}.{name}:{name}_command" for name in modules}
    return _af_group(lazy)


def _af_group(lazy: dict[str, str]) -> LazyGroup:
    @click.group("af", cls=LazyGroup, lazy_commands=lazy, context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
    @click.version_option(__version__, "--version", prog_name="af", message="%(prog)s %(version)s",
                          help="Print the version and exit.")
    def af() -> None:
        """Compile, inspect and run declarative neural agents (.af files).

        Exit codes: 0 success, 1 the input was invalid or the work failed (diagnostics on stderr),
        2 usage error, 70 internal error (a bug in af), 130 interrupted (Ctrl-C).
        """

    return af  # type: ignore[return-value]
