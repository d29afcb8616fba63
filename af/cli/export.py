"""`af export`: copy a bundle's models out for other tools (docs/cli.md, section `af export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import command, console


@command("export")
def export_command(
    path: Path = typer.Argument(..., metavar="BUNDLE", help="The .afb bundle to export from.", dir_okay=False),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Write the ONNX model here.", dir_okay=False),
    wasm: Optional[Path] = typer.Option(None, "--wasm", help="Write the WebAssembly module here.", dir_okay=False),
) -> None:
    """Verify a bundle and write its ONNX model (and/or WebAssembly module) to files, atomically."""
    from afc.writer import write_file_atomic
    from afcore.bundle import read_bundle
    from afcore.errors import BundleError, UsageError

    if onnx is None and wasm is None:
        raise UsageError("nothing to export", code="AF3009", hint="give --onnx model.onnx and/or --wasm model.wasm")
    bundle = read_bundle(path)
    wanted = [(member, target) for member, target in (("model.onnx", onnx), ("model.wasm", wasm)) if target]
    for member, _ in wanted:
        if member not in bundle.members:
            raise BundleError(f"the bundle holds no {member}", code="AF4017",
                              hint=f"compile the .af with `--target {member.split('.')[1]}`")
    if onnx is not None:
        from afc.lower_onnx import check_model_bytes

        check_model_bytes(bundle.members["model.onnx"])
    for member, target in wanted:
        try:
            write_file_atomic(target, bundle.members[member])
        except OSError as exc:
            raise UsageError(f"cannot write `{target}`: {exc.strerror or exc}", code="AF3010",
                             hint="check that the directory exists and is writable") from None
        console.print(f"wrote {target} ({len(bundle.members[member]):,} bytes)", markup=False, highlight=False)
