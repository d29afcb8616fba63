"""The compiler's IR: typed, immutable descriptions of an agent that know nothing of YAML.

`afc.build` makes them from a validated `AgentFile`; the backends (`lower_onnx`, `lower_wasm`) and
the bundle writer (`emit`) take them. Every node has a ``.span`` pointing back into the .af file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    from afcore.spans import Span
    from afcore.steps import Step

__all__ = [
    "HIDDEN_ACTIVATIONS",
    "ONNX_MAX_MODEL_BYTES",
    "ONNX_OVERHEAD_BYTES",
    "OUTPUT_ACTIVATIONS",
    "WORKFLOW_NAMES",
    "AgentSpec",
    "LayerSpec",
    "NetworkSpec",
    "ResourcesSpec",
    "WorkflowSpec",
    "onnx_model_bytes",
]

#: activations a hidden layer may use (definitions in docs/format.md)
HIDDEN_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "linear", "elu", "gelu", "softplus")
#: activations the output layer may use
OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "linear")
#: the workflows an agent declares, in the order they run
WORKFLOW_NAMES = ("initialization", "execution", "shutdown")
#: the largest serialized ONNX model protobuf can hold; here, not in `afc.lower_onnx`, so that
#: validation can say a network is too big for the ONNX backend without importing onnx
ONNX_MAX_MODEL_BYTES = (2 << 30) - 1
#: what an ONNX model holds besides its float32 parameters, at most (graph, names, attributes)
ONNX_OVERHEAD_BYTES = 65536


def onnx_model_bytes(parameters: int) -> int:
    """Return the size an ONNX model of ``parameters`` float32 weights and biases may reach.

    Args:
        parameters: weights and biases of all layers.

    Returns:
        Bytes: the parameters plus `ONNX_OVERHEAD_BYTES`; `afc.lower_onnx` refuses a model above
        `ONNX_MAX_MODEL_BYTES` by the same sum.
    """
    return 4 * parameters + ONNX_OVERHEAD_BYTES


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One dense layer: ``y = activation(x @ weight.T + bias)``.

    ``weight`` is float32 ``[out, in]`` and ``bias`` float32 ``[out]``, both C-contiguous and read-only.
    """

    index: int
    weight: np.ndarray
    bias: np.ndarray
    activation: str
    span: Span | None = None

    @property
    def in_size(self) -> int:
        """Return the number of inputs."""
        return int(self.weight.shape[1])

    @property
    def out_size(self) -> int:
        """Return the number of outputs."""
        return int(self.weight.shape[0])

    @property
    def parameters(self) -> int:
        """Return the number of weights and biases."""
        return int(self.weight.size + self.bias.size)


@dataclass(frozen=True, eq=False)
class NetworkSpec:
    """A feedforward network: hidden layers then the output layer (the last of ``layers``)."""

    input_size: int
    output_size: int
    layers: tuple[LayerSpec, ...]
    hidden_activation: str
    output_activation: str = "linear"
    learning_rate: float | None = None
    span: Span | None = None
    #: float32 [input_size] each, or None: the network sees ``(x - input_mean) / input_scale``
    input_mean: np.ndarray | None = None
    input_scale: np.ndarray | None = None
    #: the class of each output (of 0 and 1 for one sigmoid output), or None
    labels: tuple[str | int, ...] | None = None

    @property
    def normalized(self) -> bool:
        """Return True when the network normalises its inputs first."""
        return self.input_mean is not None

    @property
    def parameters(self) -> int:
        """Return the number of weights and biases of all layers."""
        return sum(layer.parameters for layer in self.layers)

    @property
    def weight_bytes(self) -> int:
        """Return the size of all float32 parameters in bytes."""
        return 4 * self.parameters


@dataclass(frozen=True)
class WorkflowSpec:
    """One workflow: its steps in the order they run."""

    name: str
    steps: tuple[Step, ...]
    span: Span | None = None


@dataclass(frozen=True)
class ResourcesSpec:
    """Declared resources: ``limits`` (memory_mb, cpu_cores, disk_mb, network_bandwidth_mbps) and ``requirements``."""

    limits: Mapping[str, float] = field(default_factory=dict)
    requirements: Mapping[str, float] = field(default_factory=dict)
    span: Span | None = None


@dataclass(frozen=True, eq=False)
class AgentSpec:
    """A whole agent, ready to lower.

    ``header`` is the YAML header as plain JSON-compatible data; ``header_text`` the header
    exactly as written; ``source_sha256`` the digest of the whole .af file's bytes.
    """

    name: str
    version: str
    network: NetworkSpec
    resources: ResourcesSpec
    workflows: Mapping[str, WorkflowSpec]
    header: Mapping[str, Any]
    header_text: str
    source_path: str
    source_sha256: str
    description: str | None = None
    author: str | None = None
    created: str | None = None
    modified: str | None = None
    #: (inputs [N, input_size], targets [N, output_size]) float32, when the file has training_data
    training_data: tuple[np.ndarray, np.ndarray] | None = None
    #: sections other than neural_weights and training_data, passed through as bytes
    extra_sections: Mapping[str, bytes] = field(default_factory=dict)
    span: Span | None = None
