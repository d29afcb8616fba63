"""`af export`: write an agent's network for other tools (docs/cli.md, section `af export`).

From a bundle, ``--onnx`` and ``--wasm`` copy its members as they are; from an .af file they are
compiled in memory (nothing else is written). ``--safetensors`` writes the weights
(``layers.<i>.weight`` [out, in], ``layers.<i>.bias``), ``--fann`` a FANN_FLO_2.1 file libfann 2.2
loads (docs/interop.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from ._app import command
from ._load import max_bundle_option
from ._output import say

if TYPE_CHECKING:
    from afc import AgentFile

#: what `af export` writes, in the order of its flags
_FORMATS = ("onnx", "wasm", "safetensors", "fann")


@command("export")
@click.argument("path", metavar="AGENT", type=click.Path(path_type=Path))
@click.option("--onnx", type=click.Path(path_type=Path), help="Write the ONNX model here.")
@click.option("--wasm", type=click.Path(path_type=Path), help="Write the WebAssembly module here.")
@click.option("--safetensors", type=click.Path(path_type=Path), help="Write the weights here (safetensors).")
@click.option("--fann", type=click.Path(path_type=Path), help="Write a FANN .net file (FANN_FLO_2.1) here.")
@max_bundle_option
def export_command(path: Path, *, onnx: Optional[Path], wasm: Optional[Path], safetensors: Optional[Path],
                   fann: Optional[Path], max_bundle_mb: Optional[int]) -> None:
    """Write the network of AGENT (an .af file or a bundle) to files, atomically.

    A bundle is verified first and its ONNX model and WebAssembly module are copied as compiled;
    an .af file is checked and compiled in memory.
    """
    from afcore.errors import UsageError

    from ._files import check_input, check_output

    targets = {name: target for name, target in zip(_FORMATS, (onnx, wasm, safetensors, fann)) if target}
    if not targets:
        raise UsageError("nothing to export", code="AF3009",
                         hint="give --onnx, --wasm, --safetensors and/or --fann with a file name")
    kind = check_input(path, ("bundle", "agent"), "af export")
    for target in targets.values():
        check_output(target, create_parents=False)
    contents = _from_bundle(path, targets, max_bundle_mb) if kind == "bundle" else _from_agent(path, targets)
    for name, target in targets.items():
        _write(target, contents[name])


def _from_bundle(path: Path, targets: dict[str, Path], max_bundle_mb: Optional[int]) -> dict[str, bytes]:
    from afcore.bundle import read_bundle
    from afcore.errors import BundleError

    from ._load import bundle_cap

    bundle = read_bundle(path, max_total_bytes=bundle_cap(max_bundle_mb))
    contents = {}
    for name in ("onnx", "wasm"):
        if name in targets:
            member = f"model.{name}"
            if member not in bundle.members:
                raise BundleError(f"the bundle holds no {member}", code="AF4017",
                                  hint=f"compile the .af with `--target {name}`")
            contents[name] = bundle.members[member]
    if "onnx" in contents:
        from afc import check_model_bytes

        check_model_bytes(contents["onnx"])
    if "safetensors" in targets:
        contents["safetensors"] = bundle.members["weights.safetensors"]
    if "fann" in targets:
        contents["fann"] = _fann(_agent_of_bundle(bundle.members, str(path)))
    return contents


def _agent_of_bundle(members: dict[str, bytes], path: str) -> AgentFile:
    """The agent a bundle was compiled from, as far as the network goes: its header and weights."""
    import afc

    data = afc.write_container(members["agent.yaml"].decode("utf-8"),
                               [("neural_weights", members["weights.safetensors"])])
    return afc.load_agent_bytes(data, path=f"{path}:agent.yaml")


def _from_agent(path: Path, targets: dict[str, Path]) -> dict[str, bytes]:
    import afc

    agent = afc.load_agent_file(path)
    contents: dict[str, bytes] = {}
    compiled = [name for name in ("onnx", "wasm") if name in targets]
    if compiled:
        lowered = afc.lower_agent(agent.spec(), targets=compiled)
        if lowered.onnx is not None:
            contents["onnx"] = bytes(lowered.onnx)
        if lowered.wasm is not None:
            contents["wasm"] = bytes(lowered.wasm.wasm)
    if "safetensors" in targets:
        contents["safetensors"] = bytes(agent.sections["neural_weights"].payload)
    if "fann" in targets:
        contents["fann"] = _fann(agent)
    return contents


def _fann(agent: Any) -> bytes:
    import afc

    return afc.export_fann(agent.spec().network).encode("ascii")


def _write(target: Path, data: bytes) -> None:
    from afcore.errors import UsageError
    from afcore.fsutil import write_file_atomic

    try:
        write_file_atomic(target, data)
    except OSError as exc:
        raise UsageError(f"cannot write `{target}`: {exc.strerror or exc}", code="AF3010",
                         hint="check that the directory exists and is writable") from None
    say(f"wrote {target} ({len(data):,} bytes)")
