"""The `af` command: one module per subcommand, registered when `app` is first used.

Heavy libraries (onnx, onnxruntime, wasmtime, redis) are imported inside the command bodies so that
`af --help` and `af validate` start fast. `main` first offers the command line to `_fastpath`,
which runs a plain `af run` without importing typer, pydantic or rich; any other command line
goes to the typer app.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: subcommand modules, in the order `af --help` lists them
COMMAND_MODULES = ("validate", "init", "pack", "unpack", "compile", "inspect", "export", "run", "profile", "debug")


def __getattr__(name: str) -> Any:
    # `app` (the typer app with every command registered) is built on first use: see `main`.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    from ._app import app

    globals()["app"] = app
    return app


def main() -> None:
    """Entry point of the `af` console script."""
    from ._fastpath import run_main

    code = run_main(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    __getattr__("app")(prog_name="af")


__all__ = ["app", "main"]
