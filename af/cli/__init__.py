"""The `af` command: a click group with one module per subcommand, each loaded when it is used.

Heavy libraries (onnx, onnxruntime, wasmtime) are imported inside the command bodies so that
`af --help` and `af validate` start fast. Shell completion is click's: `_AF_COMPLETE=bash_source af`
prints the bash script (zsh_source, fish_source likewise; docs/cli.md).
"""

from __future__ import annotations

from ._app import make_app

#: subcommand modules, in the order `af --help` lists them
COMMAND_MODULES = ("validate", "init", "pack", "unpack", "train", "import", "compile", "inspect", "export", "run",
                   "submit", "swarm", "federate", "profile", "debug", "keygen", "sign", "verify")

#: the `af` group (a click.Group)
app = make_app(COMMAND_MODULES)


def main() -> None:
    """Entry point of the `af` console script."""
    app.main(prog_name="af")


__all__ = ["COMMAND_MODULES", "app", "main"]
