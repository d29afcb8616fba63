"""Read an ONNX MLP, as skl2onnx and torch.onnx.export write them, into an `ImportedNetwork`.

What maps (docs/interop.md): one float input; in front, optionally a ``Cast`` to float, an
``ai.onnx.ml`` ``Scaler`` or ``Sub``/``Div``/``Mul`` by constants (the input normalisation); then
dense layers, each a ``Gemm`` (``transA=0``) or a ``MatMul`` with an optional ``Add``, with constant
weights, each followed by at most one activation af has (one kind for all hidden layers; ``Softmax``
or ``Sigmoid`` after the last one); ``Identity`` anywhere. After the network, what skl2onnx adds to
compute labels (``ArgMax``, ``ArrayFeatureExtractor``, ``Reshape``, ``Cast``, ``ZipMap``, and the
``1 - p`` ``Sub`` and ``Concat`` of a binary classifier) is read for the class labels and otherwise
left out. Any other node is refused with a diagnostic that names it (AF6054).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .interop import ImportedNetwork, fail
from .lower_onnx import LABELS_METADATA

__all__ = ["read_onnx"]

#: ONNX activation op -> af activation (attributes are checked in `_activation`)
ACTIVATIONS = {"Relu": "relu", "LeakyRelu": "leaky_relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Elu": "elu",
               "Gelu": "gelu", "Softplus": "softplus", "Softmax": "softmax"}
#: ops allowed in front of the first layer (Flatten(axis=1) and Identity change nothing on rows)
_PREAMBLE_OPS = ("Cast", "Identity", "Flatten", "Scaler", "Sub", "Div", "Mul")
#: ops allowed after the network's output: they derive labels from it
TAIL_OPS = frozenset({"Identity", "ArgMax", "ArrayFeatureExtractor", "Reshape", "Cast", "ZipMap", "Sub", "Concat",
                      "Squeeze", "Unsqueeze", "Flatten"})


@dataclass
class _Graph:
    """A model's main graph with its constants and the nodes that read each tensor."""

    path: str
    nodes: list[Any]
    constants: dict[str, np.ndarray]
    consumers: dict[str, list[Any]]
    outputs: set[str]
    metadata: dict[str, str]

    def node_name(self, node: Any) -> str:
        return f"`{_show(node.name or (node.output[0] if node.output else ''))}` ({_show(node.op_type)})"

    def number(self, node: Any, name: str, default: float) -> float:
        """A numeric attribute of ``node`` (``default`` when absent); any other kind of value is AF6054."""
        value = _attribute(node, name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("AF6054", f"node {self.node_name(node)} has a `{name}` attribute that is not a number",
                 "export the model again")
        return value

    def const(self, node: Any, name: str) -> np.ndarray:
        if name not in self.constants:
            fail("AF6055", f"node {self.node_name(node)} reads `{name}`, which is not a constant",
                 "af imports networks whose weights are initializers or Constant nodes")
        return self.constants[name]

    def other_input(self, node: Any, x: str) -> np.ndarray:
        """The constant operand of a two-input node whose other operand is ``x``."""
        others = [name for name in node.input if name != x]
        if len(node.input) != 2 or len(others) != 1:
            fail("AF6055", f"node {self.node_name(node)} does not take `{x}` and one constant",
                 "af maps elementwise nodes of the input with a constant")
        return self.const(node, others[0])

    def next(self, x: str, *, branch_ends: bool = False) -> Any:
        """The one node that reads ``x`` (None when none does); two readers are a branch (AF6055), or the
        end of the chain with ``branch_ends`` (what follows is then checked as the tail)."""
        readers = self.consumers.get(x, [])
        if len(readers) > 1 and branch_ends:
            return None
        if len(readers) > 1:
            names = ", ".join(self.node_name(n) for n in readers)
            fail("AF6055", f"`{x}` is read by {len(readers)} nodes ({names}): the graph branches",
                 "af imports a chain of dense layers; export the network part only")
        return readers[0] if readers else None


def read_onnx(data: bytes, *, path: str) -> ImportedNetwork:
    """Read the MLP of a serialized ONNX model.

    Args:
        data: the model's bytes.
        path: the file, for diagnostics.

    Returns:
        The network, with the input normalisation and class labels the graph holds.

    Raises:
        CheckError: AF6051 when the bytes are not an ONNX model, AF6054 for a node af cannot map (named),
            AF6055 for a graph that is not one chain of constant-weight layers from one input,
            AF6056 when the hidden layers' activations differ, AF6053 for an output activation af lacks.
    """
    graph = _load_graph(data, path)
    x = _the_input(graph)
    x, mean, scale, visited = _read_preamble(graph, x)
    layers, x, chain = _read_layers(graph, x)
    visited |= chain
    labels = _read_tail(graph, x, visited)
    hidden, output = _activations(graph, layers)
    weights = tuple(w for w, _, _ in layers)
    biases = tuple(b for _, b, _ in layers)
    # the graph multiplies by `scale`; af (as StandardScaler) divides (a zero factor is folded in later)
    with np.errstate(divide="ignore"):
        scale = None if scale is None else 1.0 / np.asarray(scale, np.float64)
    labels = labels or _metadata_labels(graph)
    return ImportedNetwork(weights, biases, hidden, output, mean=mean, scale=scale, labels=labels,
                           source=f"ONNX ({graph.path.rsplit('/', 1)[-1]})")


def _load_graph(data: bytes, path: str) -> _Graph:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError type
        fail("AF6051", f"`{path}` is neither an ONNX model nor a FANN .net file ({exc})",
             "af import reads ONNX models and FANN_FLO_2.1 .net files")
    if not model.graph.node:
        fail("AF6051", f"`{path}` is neither an ONNX model nor a FANN .net file (no graph)",
             "af import reads ONNX models and FANN_FLO_2.1 .net files")
    constants = {t.name: _tensor(t, path) for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = [a for a in node.attribute if a.name == "value"]
            if value:
                constants[node.output[0]] = _tensor(value[0].t, path)
                continue
        if node.op_type == "Transpose" and node.input[0] in constants:
            # exporters may store a weight as [in, out] and transpose it in the graph: fold it here
            try:
                constants[node.output[0]] = np.transpose(constants[node.input[0]], _attribute(node, "perm", None))
            except (ValueError, TypeError) as exc:
                fail("AF6055", f"node `{_show(node.name)}` (Transpose) cannot transpose its constant ({exc})",
                     "export the model again")
            continue
        nodes.append(node)
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in dict.fromkeys(node.input):
            if name and name not in constants:
                consumers.setdefault(name, []).append(node)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return _Graph(path, nodes, constants, consumers, {o.name for o in model.graph.output}, metadata)


def _show(text: Any) -> str:
    """A name for a message: protobuf hands out bytes for a string field that is not UTF-8."""
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _tensor(tensor: onnx.TensorProto, path: str) -> np.ndarray:
    """A constant's values; external data (weights in another file) is refused, not looked for."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
        fail("AF6055", f"`{path}` keeps tensor `{tensor.name}` in an external file",
             "save the model with its weights inside: onnx.save(model, path, save_as_external_data=False)")
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - onnx raises assorted errors for a malformed tensor
        fail("AF6051", f"tensor `{tensor.name}` of `{path}` cannot be read ({exc})", "export the model again")


def _the_input(graph: _Graph) -> str:
    model_inputs = [name for name in graph.consumers if not any(name in n.output for n in graph.nodes)]
    if len(model_inputs) != 1:
        fail("AF6055", f"the graph has {len(model_inputs)} inputs ({', '.join(map(_show, model_inputs)) or 'none'}), not one",
             "af imports networks with one input of shape [batch, features]")
    return model_inputs[0]


def _read_preamble(graph: _Graph, x: str) -> tuple[str, Any, Any, set[int]]:
    """Skip casts and read the normalisation in front of the first layer: (x, mean, scale, visited)."""
    mean = scale = None
    visited: set[int] = set()
    while (node := graph.next(x)) is not None and node.op_type in _PREAMBLE_OPS:
        if node.op_type == "Flatten" and graph.number(node, "axis", 1) != 1:
            fail("AF6054", f"node {graph.node_name(node)} flattens from axis {_attribute(node, 'axis', 1)}",
                 "af's inputs are rows [batch, features]: only Flatten(axis=1) is a no-op on them")
        if node.op_type == "Cast" and graph.number(node, "to", onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT:
            fail("AF6054", f"node {graph.node_name(node)} casts the input to another type than float",
                 "af networks compute in float32")
        if node.op_type == "Scaler":
            mean = _combine_mean(mean, scale, _floats(graph, node, "offset", [0.0]))
            scale = _combine_scale(scale, _floats(graph, node, "scale", [1.0]))
        elif node.op_type == "Sub":
            if node.input[0] != x:
                fail("AF6054", f"node {graph.node_name(node)} subtracts the input from a constant",
                     "af's normalisation is (x - mean) * scale")
            mean = _combine_mean(mean, scale, graph.other_input(node, x).astype(np.float64).reshape(-1))
        elif node.op_type in ("Div", "Mul"):
            if node.op_type == "Div" and node.input[0] != x:
                fail("AF6054", f"node {graph.node_name(node)} divides a constant by the input",
                     "af's normalisation is (x - mean) * scale")
            factor = graph.other_input(node, x).astype(np.float64).reshape(-1)
            scale = _combine_scale(scale, 1.0 / factor if node.op_type == "Div" else factor)
        visited.add(id(node))
        x = node.output[0]
    return x, mean, scale, visited


def _floats(graph: _Graph, node: Any, name: str, default: list[float]) -> np.ndarray:
    """A list-of-floats attribute (a Scaler's ``offset``, ``scale``); anything else is AF6054."""
    value = _attribute(node, name, default)
    try:
        return np.asarray(value, np.float64).reshape(-1)
    except (ValueError, TypeError):
        fail("AF6054", f"node {graph.node_name(node)} has a `{name}` attribute that is not a list of numbers",
             "export the model again")


def _combine_mean(mean: Any, scale: Any, offset: np.ndarray) -> np.ndarray:
    """((x - m) * s - o) = (x - (m + o / s)) * s: a later subtraction joins the mean."""
    shift = offset if scale is None else offset / scale
    return shift if mean is None else mean + shift


def _combine_scale(scale: Any, factor: np.ndarray) -> np.ndarray:
    return factor if scale is None else scale * factor


def _read_layers(graph: _Graph, x: str) -> tuple[list[tuple[np.ndarray, np.ndarray, Any]], str, set[int]]:
    """Read dense layers and their activations: ([(weight [out, in], bias, activation node)], output, visited)."""
    layers: list[tuple[np.ndarray, np.ndarray, Any]] = []
    visited: set[int] = set()
    node = graph.next(x)
    while node is not None and node.op_type in ("Gemm", "MatMul"):
        weight, bias, x, used = _dense(graph, node, x)
        visited |= used
        activation = None
        while (node := graph.next(x, branch_ends=True)) is not None and node.op_type == "Identity":
            visited.add(id(node))
            x = node.output[0]
        if node is not None and node.op_type in ACTIVATIONS:
            activation = node
            visited.add(id(node))
            x = node.output[0]
            while (node := graph.next(x, branch_ends=True)) is not None and node.op_type == "Identity":
                visited.add(id(node))
                x = node.output[0]
        layers.append((weight, bias, activation))
    if not layers:
        culprit = graph.next(x)
        if culprit is None:
            fail("AF6055", "the graph has no dense layer (Gemm or MatMul)", "af imports MLPs")
        fail("AF6054", f"node {graph.node_name(culprit)} cannot be mapped to an af network",
             "af maps Gemm, MatMul, Add, the activations of docs/format.md and an input Scaler")
    return layers, x, visited


def _dense(graph: _Graph, node: Any, x: str) -> tuple[np.ndarray, np.ndarray, str, set[int]]:
    """One dense layer from a Gemm, or a MatMul and the Add after it: (weight [out, in], bias, output, visited)."""
    if node.input[0] != x:
        fail("AF6055", f"node {graph.node_name(node)} multiplies a constant by the activations",
             "af maps x @ W layers (the activations first)")
    b = graph.const(node, node.input[1]).astype(np.float64)
    if b.ndim != 2:
        fail("AF6055", f"node {graph.node_name(node)} has a weight of shape {list(b.shape)}, not a matrix",
             "af maps dense layers")
    if node.op_type == "Gemm":
        if graph.number(node, "transA", 0):
            fail("AF6054", f"node {graph.node_name(node)} transposes its input (transA=1)",
                 "af maps Gemm with transA=0")
        weight = (b if graph.number(node, "transB", 0) else b.T) * graph.number(node, "alpha", 1.0)
        bias = np.zeros(weight.shape[0])
        if len(node.input) > 2 and node.input[2]:
            bias = _bias(graph, node, graph.const(node, node.input[2]), weight.shape[0]) * graph.number(node, "beta", 1.0)
        return weight, bias, node.output[0], {id(node)}
    weight, out, used = b.T, node.output[0], {id(node)}
    add = graph.next(out, branch_ends=True)
    if add is not None and add.op_type == "Add":
        used.add(id(add))
        return weight, _bias(graph, add, graph.other_input(add, out), weight.shape[0]), add.output[0], used
    return weight, np.zeros(weight.shape[0]), out, used


def _bias(graph: _Graph, node: Any, value: np.ndarray, width: int) -> np.ndarray:
    value = np.asarray(value, np.float64)
    if value.size == 1:
        return np.full(width, float(value.reshape(-1)[0]))
    if value.size != width or value.squeeze().ndim != 1:
        fail("AF6055", f"node {graph.node_name(node)} adds a bias of shape {list(value.shape)} to {width} outputs",
             "af maps a bias of one value per output")
    return value.reshape(-1)


def _read_tail(graph: _Graph, x: str, visited: set[int]) -> tuple[Any, ...] | None:
    """Check that every node left derives labels from the network's output ``x``; return the class labels."""
    readers = graph.consumers.get(x, [])
    if len(readers) > 1 and any(node.op_type not in TAIL_OPS for node in readers):
        graph.next(x)  # AF6055: the graph branches
    downstream, frontier = set(), {x}
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if id(node) not in visited and id(node) not in downstream and any(i in frontier for i in node.input):
                downstream.add(id(node))
                frontier |= set(node.output)
                changed = True
    labels = None
    for node in graph.nodes:
        if id(node) in visited:
            continue
        if id(node) not in downstream or node.op_type not in TAIL_OPS or not _harmless(graph, node, x):
            fail("AF6054", f"node {graph.node_name(node)} cannot be mapped to an af network",
                 "af maps Gemm, MatMul, Add, the activations of docs/format.md and an input Scaler; "
                 "after the output only what computes labels")
        labels = labels or _labels_of(graph, node)
    return labels


def _harmless(graph: _Graph, node: Any, x: str) -> bool:
    """A Sub in the tail must be the ``1 - p`` of a binary classifier (anything else would change the output)."""
    if node.op_type != "Sub":
        return True
    first = graph.constants.get(node.input[0])
    return first is not None and first.size == 1 and float(first.reshape(-1)[0]) == 1.0 and node.input[1] == x


def _labels_of(graph: _Graph, node: Any) -> tuple[Any, ...] | None:
    if node.op_type == "ArrayFeatureExtractor" and node.input[0] in graph.constants:
        classes = graph.constants[node.input[0]].reshape(-1)
        return tuple(c.decode() if isinstance(c, bytes) else c.item() if hasattr(c, "item") else c for c in classes)
    if node.op_type == "ZipMap":
        for name in ("classlabels_strings", "classlabels_int64s"):
            value = _attribute(node, name, None)
            if value:
                return tuple(v.decode() if isinstance(v, bytes) else int(v) for v in value)
    return None


def _metadata_labels(graph: _Graph) -> tuple[Any, ...] | None:
    """The labels af writes into the models it compiles (metadata ``af.labels``, a JSON list), if any."""
    import json

    try:
        labels = json.loads(graph.metadata.get(LABELS_METADATA, "null"))
    except ValueError:
        return None
    return tuple(labels) if isinstance(labels, list) else None


def _activations(graph: _Graph, layers: list[tuple[np.ndarray, np.ndarray, Any]]) -> tuple[str, str]:
    """Return (hidden activation, output activation), checking that af can declare them."""
    names = [_activation(graph, node) for _, _, node in layers]
    hidden = names[:-1]
    for (_, _, node), name in zip(layers, hidden):
        if name == "softmax":
            fail("AF6054", f"node {graph.node_name(node)} is a softmax inside the network",
                 "af applies softmax to the output layer only")
        if name != hidden[0]:
            fail("AF6056", f"node {graph.node_name(node)} applies `{name}` where the first hidden layer applies "
                           f"`{hidden[0]}`", "af networks use one activation for every hidden layer")
    output, node = names[-1], layers[-1][2]
    if output not in ("softmax", "sigmoid", "linear"):
        fail("AF6054", f"node {graph.node_name(node)} applies `{output}` to the output layer",
             "af's output activation is softmax, sigmoid or linear")
    return (hidden[0] if hidden else "relu"), output


def _activation(graph: _Graph, node: Any) -> str:
    if node is None:
        return "linear"
    expected = {"LeakyRelu": ("alpha", 0.01), "Elu": ("alpha", 1.0)}.get(node.op_type)
    if expected and not np.isclose(graph.number(node, expected[0], expected[1]), expected[1], rtol=1e-6):
        fail("AF6054", f"node {graph.node_name(node)} has {expected[0]}={_attribute(node, expected[0], None)}",
             f"af's {ACTIVATIONS[node.op_type]} has {expected[0]}={expected[1]}")
    if node.op_type == "Gelu" and _attribute(node, "approximate", b"none") not in (b"none", "none"):
        fail("AF6054", f"node {graph.node_name(node)} is the tanh approximation of GELU",
             "af's gelu is the exact erf form")
    if node.op_type == "Softmax" and graph.number(node, "axis", -1) not in (-1, 1):
        fail("AF6054", f"node {graph.node_name(node)} takes the softmax over axis {_attribute(node, 'axis', -1)}",
             "af's softmax runs over each row (axis -1)")
    return ACTIVATIONS[node.op_type]


def _attribute(node: Any, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default
