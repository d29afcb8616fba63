"""The `af` command: one module per subcommand, registered on import.

Heavy libraries (onnx, onnxruntime, wasmtime, redis) are imported inside the command bodies so that
`af --help` and `af validate` start fast.
"""

from __future__ import annotations

import importlib

from ._app import app as app

#: subcommand modules, in the order `af --help` lists them
COMMAND_MODULES = ("validate", "init", "pack", "unpack", "compile", "inspect", "export", "run", "profile", "debug")

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}")


def main() -> None:
    """Entry point of the `af` console script."""
    app(prog_name="af")


__all__ = ["app", "main"]
