"""Agents that learn online, for the tests: .af files with `update_weights`, compiled, and labelled streams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from afc.compile import compile_file
from afc.tensors import encode_tensors
from afc.writer import write_container

HEADER = """\
version: "1.0"
name: "{name}"
neural_config:
  input_size: {n_in}
  output_size: {n_out}
  hidden_layers: {hidden}
  activation_function: "{activation}"
  output_activation: "{output}"
  learning_rate: 0.1
{normalization}resources:
  limits:
    memory_mb: 256
    cpu_cores: 1
    disk_mb: 50
    network_bandwidth_mbps: 1000
  requirements:
    minimum_memory_mb: 16
workflows:
  initialization:
    - load_neural_network
    - initialize_memory
    - connect_to_swarm
  execution:
    - receive_input
    - process_neural_network
    - {learn}
    - update_memory
    - send_output
{extra}  shutdown:
    - save_state
    - disconnect_from_swarm
"""


def initial_layers(sizes: Sequence[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """He-initialised float32 weights, small biases."""
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32), np.zeros(o, np.float32))
            for i, o in zip(sizes, sizes[1:])]


def learning_bundle(directory: Path, sizes: Sequence[int], *, learn: str = "update_weights", seed: int = 0,
                    activation: str = "relu", output: str = "softmax", name: str = "learner",
                    save_every: int | None = None, normalization: tuple | None = None) -> Path:
    """Write and compile an agent that learns online; return the .afb path.

    ``normalization``: (mean, scale) lists for ``neural_config.input_normalization``."""
    extra = f"    - save_state(every={save_every})\n" if save_every else ""
    norm = ("  input_normalization:\n    mean: {}\n    scale: {}\n".format(*map(json.dumps, normalization))
            if normalization else "")
    header = HEADER.format(normalization=norm, name=name, n_in=sizes[0], n_out=sizes[-1], hidden=list(sizes[1:-1]), activation=activation, output=output,
                           learn=learn, extra=extra)
    tensors = {}
    for k, (w, b) in enumerate(initial_layers(sizes, seed)):
        tensors[f"layers.{k}.weight"], tensors[f"layers.{k}.bias"] = w, b
    source = directory / f"{name}.af"
    source.write_bytes(write_container(header, [("neural_weights", encode_tensors(tensors))]))
    return compile_file(source, output=directory / f"{name}.afb")


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits scaled to [0, 1]: (train x, train y, held-out x, held-out y), a fixed split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16).astype(np.float32), data.target
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def labelled_lines(x: np.ndarray, targets: Sequence, *, start: int = 0) -> bytes:
    """JSON Lines records with a ``target`` each (None: a record without one)."""
    lines = []
    for i, (row, target) in enumerate(zip(x, targets)):
        record = {"id": start + i, "input": [float(v) for v in row]}
        if target is not None:
            record["target"] = target
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()
