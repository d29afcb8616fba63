"""An agent's weights as values: what `Agent.weights` returns and `Agent.set_weights` takes.

The form is afcore.learning's: one ``(weight [out, in], bias [out])`` pair of float32 arrays per
dense layer, in order. `WeightStore` holds an agent's current weights once for all its replicas
(they share it as they share the backend), with a generation number that grows at each
replacement. The backends apply a replacement themselves (`afrt.inference.OnnxModel.set_weights`,
`afrt.sandbox.WasmPool.set_weights`); the WebAssembly one writes the blocked layout of ABI v2
(`pack_blocked`, docs/bundle.md), which `unpack_blocked` reads back.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Callable, Sequence

import numpy as np

from afcore.errors import UsageError

__all__ = [
    "Layers", "WeightStore", "decode_array", "decode_layers", "encode_array", "encode_layers", "ensure_layers",
    "pack_blocked", "unpack_blocked",
]

#: ``(weight [out, in], bias [out])`` per layer, float32
Layers = list[tuple[np.ndarray, np.ndarray]]
_F32 = np.dtype(np.float32)


def ensure_layers(layers: Any, shapes: Sequence[tuple[int, int]], *, agent: str) -> Layers:
    """Check new weights against the network and return float32, C-contiguous copies of them.

    Args:
        layers: ``(weight, bias)`` per layer (numpy arrays or anything numpy takes).
        shapes: ``(in, out)`` of each layer (`afrt.LoadedBundle.layers`).
        agent: the agent's name, for messages.

    Returns:
        New arrays, owned by the caller (later changes to ``layers`` do not reach the agent).

    Raises:
        UsageError: AF6100 when the layers, their shapes or their types do not fit the network;
            AF6103 when a value is NaN or infinite.
    """
    try:
        pairs = [tuple(pair) for pair in layers]
    except TypeError:
        pairs = None
    if pairs is None or len(pairs) != len(shapes) or any(len(pair) != 2 for pair in pairs):
        raise _shape_error(agent, f"{len(shapes)} (weight, bias) pairs", shapes)
    out: Layers = []
    for index, ((weight, bias), (n_in, n_out)) in enumerate(zip(pairs, shapes)):
        try:
            w = np.array(weight, dtype=_F32, order="C", copy=True)
            b = np.array(bias, dtype=_F32, order="C", copy=True)
        except (TypeError, ValueError) as exc:
            raise _shape_error(agent, f"numbers in layer {index} ({exc})", shapes) from None
        if w.shape != (n_out, n_in) or b.shape != (n_out,):
            raise _shape_error(agent, f"layer {index} as weight [{n_out}, {n_in}] and bias [{n_out}], "
                                      f"not {list(w.shape)} and {list(b.shape)}", shapes)
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise UsageError(f"the new weights of layer {index} of agent `{agent}` are not all finite",
                             code="AF6103", hint="an agent's weights must be finite numbers (no NaN or infinity)")
        out.append((w, b))
    return out


def _shape_error(agent: str, wanted: str, shapes: Sequence[tuple[int, int]]) -> UsageError:
    layout = ", ".join(f"[{o}, {i}]+[{o}]" for i, o in shapes)
    return UsageError(f"agent `{agent}` takes weights with {wanted}", code="AF6100",
                      hint=f"the network's layers are {layout} (weight [out, in] + bias [out]), as Agent.weights() returns")


def pack_blocked(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Return one layer in the WebAssembly module's blocked layout (docs/bundle.md, ABI v2).

    Blocks of 4 output neurons, interleaved by input (``block[b][i] = w[4b:4b+4, i]``, the last
    block padded with zeros), then the bias padded to a multiple of 4: float32, little-endian.
    """
    n_out, n_in = weight.shape
    blocks = -(-n_out // 4)
    packed = np.zeros(blocks * n_in * 4 + blocks * 4, dtype="<f4")
    grid = packed[: blocks * n_in * 4].reshape(blocks, n_in, 4)
    padded = np.zeros((blocks * 4, n_in), dtype="<f4")
    padded[:n_out] = weight
    grid[:] = padded.reshape(blocks, 4, n_in).transpose(0, 2, 1)
    packed[blocks * n_in * 4 : blocks * n_in * 4 + n_out] = bias
    return packed


def unpack_blocked(packed: np.ndarray, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(weight [out, in], bias [out])`` of a layer stored by `pack_blocked` (new arrays)."""
    blocks = -(-n_out // 4)
    grid = np.asarray(packed[: blocks * n_in * 4], dtype=_F32).reshape(blocks, n_in, 4)
    weight = grid.transpose(0, 2, 1).reshape(blocks * 4, n_in)[:n_out]
    bias = np.asarray(packed[blocks * n_in * 4 : blocks * n_in * 4 + n_out], dtype=_F32)
    return np.ascontiguousarray(weight), bias.copy()


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """Return a float32 array as JSON: ``{"shape": [...], "f32le": "<base64 of its little-endian bytes>"}``.

    Exact (JSON numbers would round-trip float32 only through careful printing) and about 4x smaller
    than decimal text; checkpoints and ``neural.updates`` messages use it (docs/runtime.md).
    """
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(data.shape), "f32le": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(data: Any) -> np.ndarray:
    """Return the float32 array of `encode_array`'s form (a new, writable array).

    Raises:
        ValueError: when ``data`` is not that form.
    """
    if not isinstance(data, dict) or not isinstance(data.get("f32le"), str) or not isinstance(data.get("shape"), list):
        raise ValueError("not an encoded float32 array")
    raw = base64.b64decode(data["f32le"], validate=True)
    shape = tuple(int(n) for n in data["shape"])
    if len(raw) != 4 * math.prod(shape) or any(n < 0 for n in shape):
        raise ValueError(f"{len(raw)} bytes do not hold float32 {list(shape)}")
    return np.frombuffer(raw, dtype="<f4").astype(_F32).reshape(shape)


def encode_layers(layers: Layers) -> list[dict[str, Any]]:
    """Return weights as JSON: ``[{"weight": encode_array(w), "bias": encode_array(b)}, ...]``, one per layer."""
    return [{"weight": encode_array(w), "bias": encode_array(b)} for w, b in layers]


def decode_layers(data: Any) -> Layers:
    """Return the weights of `encode_layers`' form.

    Raises:
        ValueError: when ``data`` is not that form.
    """
    if not isinstance(data, list) or not all(isinstance(layer, dict) for layer in data):
        raise ValueError("not a list of encoded layers")
    return [(decode_array(layer.get("weight")), decode_array(layer.get("bias"))) for layer in data]


class WeightStore:
    """The current weights of an agent, shared by its replicas.

    Args:
        read: returns the weights the backend was loaded with (called once, when first needed).

    Attributes:
        generation: 0 for the loaded weights; one more at each `replace`.
    """

    def __init__(self, read: Callable[[], Layers]) -> None:
        self._read = read
        self._layers: Layers | None = None
        self.generation = 0

    def current(self) -> Layers:
        """Return the current weights (the store's own arrays: callers must not write to them)."""
        if self._layers is None:
            self._layers = self._read()
        return self._layers

    def replace(self, layers: Layers) -> None:
        """Make ``layers`` (checked, owned by the store) the current weights."""
        self._layers = layers
        self.generation += 1
