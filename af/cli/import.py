"""`af import`: an ONNX MLP or a FANN .net file becomes an .af file (docs/cli.md, section `af import`).

The module's name is the command's (`af.cli.COMMAND_MODULES` maps names to modules); Python code
imports it with `importlib.import_module("af.cli.import")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ._app import command
from ._output import say


@command("import")
@click.argument("path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Write the .af file here.")
@click.option("--name", help="The agent's name  [default: made from MODEL's file name]")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def import_command(path: Path, *, output: Path, name: Optional[str], force: bool) -> None:
    """Turn an existing MLP (ONNX model.onnx, or FANN model.net) into an .af file, atomically.

    ONNX as skl2onnx and torch.onnx.export write MLPs (docs/interop.md); FANN_FLO_2.1 as libfann 2.2
    saves it. Anything that is not a plain MLP is refused with a diagnostic naming what cannot be mapped.
    """
    from afc import agent_name, import_model_bytes
    from afcore.errors import UsageError

    from ._files import read_input
    from .init import _write

    if output.exists() and not force and not output.is_dir():
        raise UsageError(f"`{output}` already exists", code="AF0902", hint="pass --force to overwrite it")
    data = import_model_bytes(read_input(path), path=str(path), name=agent_name(path, name))
    _write(output, data)
    say(f"wrote {output} ({len(data):,} bytes) from {path}")
