"""`af export`: copy a bundle's models out for other tools (docs/cli.md, section `af export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ._app import command
from ._load import max_bundle_option
from ._output import say


@command("export")
@click.argument("path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--onnx", type=click.Path(path_type=Path), help="Write the ONNX model here.")
@click.option("--wasm", type=click.Path(path_type=Path), help="Write the WebAssembly module here.")
@max_bundle_option
def export_command(path: Path, *, onnx: Optional[Path], wasm: Optional[Path], max_bundle_mb: Optional[int]) -> None:
    """Verify a bundle and write its ONNX model (and/or WebAssembly module) to files, atomically."""
    from afcore.fsutil import write_file_atomic
    from afcore.bundle import read_bundle
    from afcore.errors import BundleError, UsageError

    from ._files import check_input, check_output
    from ._load import bundle_cap

    if onnx is None and wasm is None:
        raise UsageError("nothing to export", code="AF3009", hint="give --onnx model.onnx and/or --wasm model.wasm")
    check_input(path, ("bundle",), "af export")
    for target in (onnx, wasm):
        if target is not None:
            check_output(target, create_parents=False)
    bundle = read_bundle(path, max_total_bytes=bundle_cap(max_bundle_mb))
    wanted = [(member, target) for member, target in (("model.onnx", onnx), ("model.wasm", wasm)) if target]
    for member, _ in wanted:
        if member not in bundle.members:
            raise BundleError(f"the bundle holds no {member}", code="AF4017",
                              hint=f"compile the .af with `--target {member.split('.')[1]}`")
    if onnx is not None:
        from afc import check_model_bytes

        check_model_bytes(bundle.members["model.onnx"])
    for member, target in wanted:
        try:
            write_file_atomic(target, bundle.members[member])
        except OSError as exc:
            raise UsageError(f"cannot write `{target}`: {exc.strerror or exc}", code="AF3010",
                             hint="check that the directory exists and is writable") from None
        say(f"wrote {target} ({len(bundle.members[member]):,} bytes)")
