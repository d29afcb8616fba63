"""The float64 numpy forward pass that tests compare af's backends and runtime against.

Written from the activation definitions of docs/format.md, independently of afc's lowering code.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

HIDDEN = {
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.01 * z),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "linear": lambda z: z,
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "gelu": lambda z: 0.5 * z * (1.0 + erf(z / np.sqrt(2.0))),
    "softplus": lambda z: np.logaddexp(0.0, z),
}


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


OUTPUT = {"softmax": softmax, "sigmoid": HIDDEN["sigmoid"], "linear": HIDDEN["linear"]}


def forward64(network, x: np.ndarray) -> np.ndarray:
    """Run an `afc.spec.NetworkSpec` on ``x`` in float64: each hidden layer's own activation, then
    the network's output activation."""
    h = np.asarray(x, dtype=np.float64)
    last = len(network.layers) - 1
    for i, layer in enumerate(network.layers):
        h = h @ layer.weight.astype(np.float64).T + layer.bias.astype(np.float64)
        h = OUTPUT[network.output_activation](h) if i == last else HIDDEN[layer.activation](h)
    return h
