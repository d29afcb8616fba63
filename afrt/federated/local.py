"""A participant's side of a round: its data, local training, validation, attacks and DP noise.

The data never leaves the participant: `train_local` returns a model, and only that model is
published. Training is afcore.learning's arithmetic (the same as `af train`), with plain SGD on
mini-batches, plus FedProx's proximal term ``mu/2 ||w - w_global||^2`` when ``mu > 0`` (its
gradient ``mu (w - w_global)`` is added to each step's gradient, Li et al. 2020, eq. 2).

A model travels as one flat float32 vector (`afcore.learning.Parameters.flat`: each layer's weight
[out, in] then its bias [out], in order); its digest is the sha256 of those bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from afcore import learning
from afcore.errors import UsageError

__all__ = ["ATTACKS", "LocalData", "Network", "accuracy", "apply_attack", "clip_and_noise", "digest_of",
           "flatten", "load_local_data", "train_local", "unflatten"]

#: the misbehaviours a worker can simulate (``--simulate-attack``), for evaluating robustness
ATTACKS = ("sign-flip", "gaussian", "label-flip")
#: a sign-flip attacker sends ``global - SIGN_FLIP_SCALE * (local - global)``
SIGN_FLIP_SCALE = 4.0
#: a gaussian attacker sends ``global + N(0, GAUSSIAN_SIGMA^2)`` per coordinate
GAUSSIAN_SIGMA = 1.0
#: mini-batch size of local training
BATCH_SIZE = 32


@dataclass(frozen=True)
class Network:
    """What local training needs to know of the agent's network (from its manifest)."""

    sizes: tuple[int, ...]
    hidden: str
    output: str

    @classmethod
    def of(cls, agent: Any) -> "Network":
        """Return the network of a loaded agent (`afrt.Agent`)."""
        net = agent.bundle.info.network
        sizes = (net.layers[0].in_size, *(layer.out_size for layer in net.layers))
        return cls(sizes, net.hidden_activation, net.output_activation)

    @property
    def size(self) -> int:
        """The number of parameters (the length of a flat model)."""
        return sum(i * o + o for i, o in zip(self.sizes, self.sizes[1:]))


@dataclass(frozen=True, eq=False)
class LocalData:
    """A participant's records: float32 inputs [N, in] and targets [N, out]."""

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def load_local_data(path: str | Path, network: Network) -> LocalData:
    """Read a safetensors file with tensors ``inputs`` [N, in] and ``targets`` [N, out] or [N] class indices.

    Raises:
        UsageError: AF6170 when the file cannot be read or its tensors do not fit the network.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(Path(path).read_bytes())
    except (OSError, SafetensorError, ValueError) as exc:
        raise UsageError(f"cannot read the local data `{path}`: {exc}", code="AF6170",
                         hint="give a safetensors file with tensors `inputs` and `targets` (as `af train` reads)"
                         ) from None
    n_in, n_out = network.sizes[0], network.sizes[-1]
    inputs, targets = tensors.get("inputs"), tensors.get("targets")
    if inputs is None or targets is None or inputs.ndim != 2 or inputs.shape[1] != n_in or len(inputs) == 0:
        raise UsageError(f"`{path}` must hold `inputs` [N, {n_in}] and `targets` for N > 0 records",
                         code="AF6170", hint="write the shard with safetensors.numpy.save_file")
    if targets.ndim == 1 and n_out > 1:  # class indices -> one-hot rows
        index = targets.astype(np.int64)
        if len(index) != len(inputs) or index.min() < 0 or index.max() >= n_out:
            raise UsageError(f"`{path}`: class indices must be in [0, {n_out}), one per record", code="AF6170")
        targets = np.eye(n_out, dtype=np.float32)[index]
    targets = targets.reshape(len(targets), -1)
    if targets.shape != (len(inputs), n_out):
        raise UsageError(f"`{path}`: `targets` must be [{len(inputs)}, {n_out}], not {list(targets.shape)}",
                         code="AF6170")
    x, t = np.ascontiguousarray(inputs, np.float32), np.ascontiguousarray(targets, np.float32)
    if not (np.isfinite(x).all() and np.isfinite(t).all()):
        raise UsageError(f"`{path}` holds NaN or infinite values", code="AF6170")
    return LocalData(x, t)


def flatten(layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Return ``(weight, bias)`` per layer as one flat float32 vector."""
    return np.concatenate([np.concatenate([np.ravel(w), np.ravel(b)]) for w, b in layers]).astype(np.float32)


def unflatten(flat: np.ndarray, network: Network) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return the ``(weight [out, in], bias [out])`` views of a flat vector of ``network``."""
    shapes = [((o, i), (o,)) for i, o in zip(network.sizes, network.sizes[1:])]
    return learning.Parameters.views(np.asarray(flat), shapes)


def digest_of(flat: np.ndarray) -> str:
    """Return the sha256 (hex) of a flat float32 model: its identity in votes and in the adopted history."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype="<f4").tobytes()).hexdigest()


def train_local(global_flat: np.ndarray, network: Network, data: LocalData, *, epochs: int, learning_rate: float,
                mu: float = 0.0, rng: np.random.Generator | None = None,
                batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, float]:
    """Train ``epochs`` epochs of mini-batch SGD from the global model on the local data.

    Args:
        global_flat: the round's global model (flat float32).
        network: its shapes and activations.
        data: the local records.
        epochs: local epochs E.
        learning_rate: the SGD step.
        mu: FedProx's proximal coefficient (0: plain FedAvg clients).
        rng: shuffles the records each epoch.
        batch_size: records per step.

    Returns:
        The local model (flat float32) and the mean training loss over the last epoch's batches.
    """
    rng = rng or np.random.default_rng()
    params = learning.Parameters(network.sizes, np.float32)
    params.flat[:] = global_flat
    anchor = np.array(global_flat, dtype=np.float32)
    grads_flat, grads = params.gradient_buffers()
    optimizer = learning.make_optimizer("sgd", params.flat.size, learning_rate, np.float32)
    n, loss = len(data), 0.0
    for _ in range(max(epochs, 1)):
        order, losses = rng.permutation(n), []
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            losses.append(learning.backprop(params.layers, grads, network.hidden, network.output,
                                            data.inputs[batch], data.targets[batch]))
            if mu:
                grads_flat += np.float32(mu) * (params.flat - anchor)
            optimizer.step(params.flat, grads_flat)
        loss = float(np.mean(losses))
    return params.flat.copy(), loss


def accuracy(flat: np.ndarray, network: Network, data: LocalData) -> float:
    """Return the share of records whose largest output is their target's (> 0.5 for one sigmoid output)."""
    z, _, _ = learning.forward(unflatten(np.asarray(flat, np.float32), network), network.hidden, data.inputs,
                               keep=False)
    if z.shape[1] == 1:
        return float(np.mean((z[:, 0] > 0) == (data.targets[:, 0] > 0.5)))
    return float(np.mean(z.argmax(axis=1) == data.targets.argmax(axis=1)))


def flip_labels(data: LocalData) -> LocalData:
    """Return the data with class c relabelled C-1-c (a label-flip attacker's training set)."""
    return LocalData(data.inputs, np.ascontiguousarray(data.targets[:, ::-1]))


def apply_attack(attack: str | None, global_flat: np.ndarray, local: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Return what a (simulated) attacker sends instead of its honest local model.

    sign-flip: the update reversed and scaled, ``g - SIGN_FLIP_SCALE (w - g)``; gaussian: ``g`` plus
    N(0, GAUSSIAN_SIGMA^2) noise; label-flip changes the training data instead (`flip_labels`).
    """
    if attack == "sign-flip":
        return (global_flat - SIGN_FLIP_SCALE * (local - global_flat)).astype(np.float32)
    if attack == "gaussian":
        return (global_flat + rng.normal(0.0, GAUSSIAN_SIGMA, size=local.shape)).astype(np.float32)
    return local


def clip_and_noise(global_flat: np.ndarray, local: np.ndarray, *, clip: float, noise: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Clip the update ``w - g`` to L2 norm ``clip`` and add N(0, (noise * clip)^2) per coordinate.

    The Gaussian mechanism on the client's whole update (local DP at the level of a client's update):
    docs/federated.md says what this does and does not guarantee.
    """
    delta = np.asarray(local, np.float64) - global_flat
    norm = float(np.linalg.norm(delta))
    if norm > clip:
        delta *= clip / norm
    delta += rng.normal(0.0, noise * clip, size=delta.shape)
    return (global_flat + delta).astype(np.float32)
