"""`af init`: scaffold a valid .af file with He-initialised weights (docs/cli.md, section `af init`)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import click

from ._app import command
from ._output import say

#: a valid agent name (the `name` pattern of schemas/af-1.0.schema.json)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HIDDEN = ("relu", "leaky_relu", "sigmoid", "tanh", "linear", "elu", "gelu", "softplus")
_OUTPUT = ("softmax", "sigmoid", "linear")

_TEMPLATE = """\
# Agent File Format v1.0 (written by `af init`; see docs/format.md)
version: "1.0"
name: "{name}"
description: "{description}"
author: "{author}"
created: "{now}"
modified: "{now}"

neural_config:
  network_type: "feedforward"
  input_size: {input_size}
  output_size: {output_size}
  hidden_layers: [{hidden}]
  activation_function: "{activation}"
  output_activation: "{output_activation}"
  learning_rate: 0.001

resources:
  limits:
    memory_mb: 512
    cpu_cores: 1.0
    disk_mb: 100
    network_bandwidth_mbps: 10
  requirements:
    minimum_memory_mb: 128
    minimum_cpu_cores: 0.5

workflows:
  initialization:
    - load_neural_network
    - initialize_memory
    - connect_to_swarm
    - register_capabilities
  execution:
    - receive_input
    - process_neural_network
    - update_memory
    - send_output
  shutdown:
    - save_state
    - disconnect_from_swarm
    - cleanup_resources
"""


@command("init")
@click.argument("name", metavar="NAME")
@click.option("--input-size", default=16, show_default=True, type=click.IntRange(1, 1048576),
              help="Inputs of the network.")
@click.option("--hidden", default="32,16", show_default=True,
              help="Hidden layer sizes, comma-separated ('' for none).")
@click.option("--output-size", default=4, show_default=True, type=click.IntRange(1, 1048576),
              help="Outputs of the network.")
@click.option("--activation", default="relu", show_default=True, type=click.Choice(_HIDDEN),
              help="Activation of the hidden layers.")
@click.option("--output-activation", type=click.Choice(_OUTPUT),
              help="Activation of the output layer  [default: softmax; sigmoid for one output]")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the weight initialisation.")
@click.option("--raw", is_flag=True, help="Store the weights as raw zstd bytes instead of base64 text.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init_command(name: str, *, input_size: int, hidden: str, output_size: int, activation: str,
                 output_activation: Optional[str], seed: int, raw: bool, force: bool) -> None:
    """Scaffold NAME.af: the reference workflows and a network with He-initialised weights (valid as written).

    NAME may be a path (dir/NAME writes dir/NAME.af; missing directories are created).
    """
    from afcore.errors import UsageError

    target, agent_name = _target(name)
    sizes = _hidden_sizes(hidden)
    output_activation = output_activation or default_output_activation(output_size)
    if output_activation == "softmax" and output_size == 1:
        say("warning: softmax over one output is always 1.0; sigmoid or linear is what one output needs")
    if target.exists() and not force:
        raise UsageError(f"`{target}` already exists", code="AF0902", hint="pass --force to overwrite it")
    header = _TEMPLATE.format(
        name=agent_name, description=f"{agent_name}: a feedforward agent", author="af init",
        now=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), input_size=input_size,
        output_size=output_size, hidden=", ".join(map(str, sizes)), activation=activation,
        output_activation=output_activation,
    )
    data = build_scaffold(header, [input_size, *sizes, output_size], seed=seed, raw=raw, path=str(target))
    _write(target, data)
    layout = "-".join(map(str, [input_size, *sizes, output_size]))
    activations = f"{activation}/{output_activation}" if sizes else f"{output_activation} (no hidden layer)"
    say(f"created {target}: {layout} {activations}, seed {seed}")


def default_output_activation(output_size: int) -> str:
    """Return the output activation `af init` picks: softmax over classes, sigmoid for one output
    (softmax over one value is always 1.0)."""
    return "sigmoid" if output_size == 1 else "softmax"


def _write(target: Path, data: bytes) -> None:
    """Write the file atomically, creating missing directories; a place that cannot be written is AF0906."""
    from afcore.fsutil import write_file_atomic

    from ._files import check_output, usage_error

    check_output(target)
    try:
        write_file_atomic(target, data)
    except OSError as exc:
        raise usage_error(f"cannot write `{target}`: {exc.strerror or exc}", "AF0906",
                          "check that the place exists and is writable", target) from None


def build_scaffold(header: str, sizes: list[int], *, seed: int, raw: bool, path: str) -> bytes:
    """Return the bytes of an .af file with ``header`` and He-initialised weights for ``sizes``.

    He (Kaiming) normal initialisation: ``weight ~ N(0, 2 / fan_in)``, bias 0, drawn from
    ``numpy.random.default_rng(seed)`` layer by layer, weight shape [out, in].

    Raises:
        InternalError: if the result does not validate (a bug in the scaffold).
    """
    import numpy as np

    from afc import encode_tensors, load_agent_bytes, write_container
    from afcore.errors import InternalError, SourceError

    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"layers.{i}.weight"] = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        tensors[f"layers.{i}.bias"] = np.zeros(fan_out, dtype=np.float32)
    data = write_container(header, [("neural_weights", encode_tensors(tensors))], raw=raw)
    try:
        load_agent_bytes(data, path=path)
    except SourceError as error:
        raise InternalError(f"`af init` produced an invalid file: {error.message}") from None
    return data


def _target(name: str) -> tuple[Path, str]:
    from afcore.errors import UsageError

    path = Path(name)
    stem = path.name.removesuffix(".af")
    if not _NAME.fullmatch(stem):
        raise UsageError(f"`{stem}` is not a valid agent name", code="AF0903",
                         hint="use letters, digits, `.`, `_` and `-`, starting with a letter or digit (at most 64)")
    return path.with_name(f"{stem}.af"), stem


def _hidden_sizes(text: str) -> list[int]:
    from afcore.errors import UsageError

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > 64 or not all(p.isdigit() and 1 <= int(p) <= 1048576 for p in parts):
        raise UsageError(f"--hidden `{text}` is not a list of layer sizes", code="AF0903",
                         hint="e.g. --hidden 64,32: positive integers, at most 64 layers")
    return [int(p) for p in parts]
