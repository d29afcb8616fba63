"""Inside the network for one record: each layer's values, and the two backends side by side.

`LayerProbe` runs the bundle's ONNX model with every layer's pre-activation (the Gemm's output)
and post-activation values as extra graph outputs, so `layers` shows what each layer did for the
record at a stop: shape, min, max, mean, the count of zeros (relu's dead units) and of NaN and
infinities. The WebAssembly module keeps only two ping-pong activation buffers (ABI v1,
docs/bundle.md), so per-layer values come from the ONNX model; `diff` compares what both backends
output for the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

__all__ = ["BackendDiff", "LayerProbe", "LayerStats", "backend_diff"]


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one tensor of one layer for one record."""

    layer: int
    stage: str  # "pre" (before the activation) or "post"
    activation: str
    shape: tuple[int, ...]
    minimum: float
    maximum: float
    mean: float
    zeros: int
    nans: int
    infinities: int
    zero_units: tuple[int, ...] = ()  # which units are 0 (relu's dead units, for this record)

    def line(self) -> str:
        """Return the stats as one line of text (what `layers` prints)."""
        flags = "".join([f"  NaN x{self.nans}" if self.nans else "", f"  Inf x{self.infinities}" if self.infinities else ""])
        units = ""
        if self.zero_units and self.stage == "post":
            shown = ", ".join(map(str, self.zero_units[:MAX_UNITS_SHOWN]))
            more = f", ... {len(self.zero_units) - MAX_UNITS_SHOWN} more" if len(self.zero_units) > MAX_UNITS_SHOWN else ""
            units = f" (units {shown}{more})"
        return (f"layer {self.layer} {self.stage:<4} {self.activation:<10} shape {list(self.shape)!s:<8} "
                f"min {self.minimum:<11.5g} max {self.maximum:<11.5g} mean {self.mean:<11.5g} "
                f"zeros {self.zeros}/{int(np.prod(self.shape))}{units}{flags}")


#: how many zero units a `layers` line names
MAX_UNITS_SHOWN = 8


def _stats(layer: int, stage: str, activation: str, values: np.ndarray) -> LayerStats:
    finite = values[np.isfinite(values)]
    return LayerStats(
        layer, stage, activation, tuple(int(d) for d in values.shape),
        float(finite.min()) if finite.size else float("nan"), float(finite.max()) if finite.size else float("nan"),
        float(finite.mean()) if finite.size else float("nan"), int((values == 0).sum()),
        int(np.isnan(values).sum()), int(np.isinf(values).sum()), tuple(np.flatnonzero(values == 0).tolist()),
    )


class LayerProbe:
    """Runs a bundle's ONNX model with every layer's values as outputs.

    Args:
        model_bytes: the bundle's ``model.onnx``.
        activations: each layer's activation, in order (the manifest's network layers).
    """

    def __init__(self, model_bytes: bytes, activations: list[str]) -> None:
        import onnx
        import onnxruntime

        model = onnx.load_from_string(model_bytes)
        graph = model.graph
        known = {o.name for o in graph.output}
        # layers.<i>.linear is the Gemm's output where an activation follows; the layer's output otherwise
        self._names: list[tuple[int, str, str]] = []
        for node in graph.node:
            index = int(node.name.split(".")[1]) if node.name.startswith("layers.") else None
            if index is None:
                continue
            stage = "pre" if node.op_type == "Gemm" else "post"
            self._names.append((index, stage, node.output[0]))
            if node.output[0] not in known:
                graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
                known.add(node.output[0])
        self._activations = activations
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                     providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def stats(self, row: np.ndarray) -> list[LayerStats]:
        """Return each layer's pre- and post-activation statistics for one input row, in order."""
        outputs = [name for _, _, name in self._names]
        values = self._session.run(outputs, {self._input: np.asarray(row, np.float32).reshape(1, -1)})
        found = []
        for (index, stage, _), value in zip(self._names, values):
            activation = self._activations[index] if index < len(self._activations) else "?"
            if stage == "pre" and activation == "linear":
                stage = "post"  # a linear layer's Gemm output is its output
            found.append(_stats(index, stage, activation, np.asarray(value)[0]))
        return found


@dataclass(frozen=True)
class BackendDiff:
    """The ONNX and WebAssembly outputs of one record and how far apart they are."""

    onnx: np.ndarray
    wasm: np.ndarray
    max_abs: float
    max_rel: float

    def lines(self) -> list[str]:
        """Return the outputs side by side and the largest differences (what `diff` prints)."""
        out = [f"{'i':>4}  {'onnx':>14}  {'wasm':>14}  {'abs diff':>10}"]
        for i, (a, b) in enumerate(zip(self.onnx.tolist(), self.wasm.tolist())):
            out.append(f"{i:>4}  {a:>14.8g}  {b:>14.8g}  {abs(a - b):>10.3g}")
        out.append(f"largest absolute difference {self.max_abs:.3g}, largest relative difference {self.max_rel:.3g}")
        return out


def backend_diff(onnx_agent: Any, wasm_agent: Any, row: np.ndarray) -> BackendDiff:
    """Run one input row through both backends and compare the outputs.

    Args:
        onnx_agent: an `afrt.Agent` on the onnx backend.
        wasm_agent: an `afrt.Agent` on the wasm backend.
        row: the record's input (float32, ``input_size`` values).

    Returns:
        The `BackendDiff`.
    """
    x = np.asarray(row, np.float32).reshape(1, -1)
    a, b = onnx_agent.infer(x)[0], wasm_agent.infer(x)[0]
    absolute = np.abs(a.astype(np.float64) - b.astype(np.float64))
    scale = np.maximum(np.abs(a.astype(np.float64)), np.finfo(np.float32).tiny)
    return BackendDiff(a, b, float(absolute.max()), float((absolute / scale).max()))


def other_backend(agent: Any) -> Optional[str]:
    """Return the backend of the bundle that ``agent`` does not run on, when the bundle has it."""
    targets = agent.bundle.manifest.get("targets") or []
    other = "wasm" if agent.backend == "onnx" else "onnx"
    return other if other in targets else None
