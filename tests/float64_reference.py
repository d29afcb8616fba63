"""The float64 numpy forward pass that tests compare af's backends and runtime against.

Written from the activation definitions of docs/format.md, independently of afc's lowering code.
"""

from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])

HIDDEN = {
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z >= 0, z, 0.01 * z),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "linear": lambda z: z,
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0.0))),
    "gelu": lambda z: 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0))),
    "softplus": lambda z: np.logaddexp(0.0, z),
}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


OUTPUT = {"softmax": _softmax, "sigmoid": HIDDEN["sigmoid"], "linear": HIDDEN["linear"]}


def forward64(network, x: np.ndarray) -> np.ndarray:
    """Run an `afc.spec.NetworkSpec` on ``x`` in float64, with its own hidden and output activations."""
    h = np.asarray(x, dtype=np.float64)
    last = len(network.layers) - 1
    for i, layer in enumerate(network.layers):
        h = h @ layer.weight.astype(np.float64).T + layer.bias.astype(np.float64)
        h = OUTPUT[network.output_activation](h) if i == last else HIDDEN[network.hidden_activation](h)
    return h
