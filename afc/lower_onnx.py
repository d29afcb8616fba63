"""ONNX backend: `NetworkSpec` -> one `onnx.ModelProto` per agent.

The graph takes ``input`` ``[batch, input_size]`` float32 and returns ``output``
``[batch, output_size]``. Each layer is a ``Gemm`` (``transB=1``, so the ``[out, in]`` weights are
stored exactly as in the .af) followed by its activation node; weights and biases are initializers
named as in the .af's safetensors (``layers.<i>.weight``, ``layers.<i>.bias``) and nodes are named
``layers.<i>.gemm`` / ``layers.<i>.<activation>`` so that a node name maps back to its layer.

The opset and IR version are pinned: onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from afcore import __version__
from afcore.errors import BundleError, LoweringError
from afcore.protowire import field_head

from .spec import ONNX_MAX_MODEL_BYTES, onnx_model_bytes

if TYPE_CHECKING:
    from .spec import LayerSpec, NetworkSpec

__all__ = [
    "INPUT_NAME",
    "IR_VERSION",
    "LABELS_METADATA",
    "OPSET",
    "OUTPUT_NAME",
    "check_model_bytes",
    "lower_network",
    "model_bytes",
    "model_text",
    "network_model_bytes",
]

#: the ONNX operator set the models import (Gelu needs 20); onnxruntime 1.31 runs it
OPSET = 21
#: the ONNX IR version written into models (onnxruntime 1.31 accepts up to 11)
IR_VERSION = 10
#: name of the graph input and of the dynamic batch dimension
INPUT_NAME = "input"
BATCH_DIM = "batch"
#: name of the graph output
OUTPUT_NAME = "output"
#: the model metadata key holding the network's class labels (a JSON list), when it has labels
LABELS_METADATA = "af.labels"
#: the largest serialized model protobuf can hold (defined in `afc.spec`, which validation reads)
MAX_MODEL_BYTES = ONNX_MAX_MODEL_BYTES
#: models above this size are checked without parsing their weights a second time (`_check_bytes`)
LEAN_CHECK_BYTES = 64 << 20

#: activation -> (ONNX op, attributes); definitions in docs/format.md ("linear" adds no node)
ACTIVATION_OPS: dict[str, tuple[str, dict[str, Any]]] = {
    "relu": ("Relu", {}),
    "leaky_relu": ("LeakyRelu", {"alpha": 0.01}),
    "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}),
    "elu": ("Elu", {"alpha": 1.0}),
    "gelu": ("Gelu", {"approximate": "none"}),
    "softplus": ("Softplus", {}),
    "softmax": ("Softmax", {"axis": -1}),
}


def _layer_nodes(layer: LayerSpec, activation: str, x: str, out: str) -> list[onnx.NodeProto]:
    prefix = f"layers.{layer.index}"
    if activation != "linear" and activation not in ACTIVATION_OPS:
        raise LoweringError(
            f"layer {layer.index} has activation {activation!r}, which the ONNX backend does not know",
            code="AF3001",
            hint="use one of the activations listed in docs/format.md",
        )
    gemm_out = out if activation == "linear" else f"{prefix}.linear"
    nodes = [
        helper.make_node(
            "Gemm", [x, f"{prefix}.weight", f"{prefix}.bias"], [gemm_out], name=f"{prefix}.gemm", transB=1
        )
    ]
    if activation != "linear":
        op, attributes = ACTIVATION_OPS[activation]
        nodes.append(helper.make_node(op, [gemm_out], [out], name=f"{prefix}.{activation}", **attributes))
    return nodes


def _check_shapes(network: NetworkSpec) -> None:
    width = network.input_size
    for layer in network.layers:
        if layer.weight.shape != (layer.out_size, width) or layer.bias.shape != (layer.out_size,):
            raise LoweringError(
                f"layer {layer.index} has weight {tuple(layer.weight.shape)} and bias {tuple(layer.bias.shape)}, "
                f"expected ({layer.out_size}, {width}) and ({layer.out_size},)",
                code="AF3002",
                hint="this is a bug in the checks before lowering: please report it",
            )
        width = layer.out_size
    if not network.layers or width != network.output_size:
        raise LoweringError(
            f"the network ends with {width} outputs, not output_size {network.output_size}", code="AF3002"
        )


def lower_network(network: NetworkSpec, *, graph_name: str = "agent", with_data: bool = True,
                  weights_as_inputs: bool = False) -> onnx.ModelProto:
    """Build the ONNX model of a network (not yet checked: see `model_bytes`).

    Args:
        network: the network; weights float32 ``[out, in]``.
        graph_name: the graph's name (the agent's name).
        with_data: False leaves the initializers' ``raw_data`` empty (name, type and dims only), the
            skeleton `network_model_bytes` completes without copying the weights into protobuf.
        weights_as_inputs: also list each layer's weight and bias as a graph input (after ``input``),
            with its initializer as the default: the model of an agent that learns (``update_weights``),
            whose runtime feeds the current weights on every call instead of making a new session
            after every step (docs/bundle.md, "Weights that change").

    Returns:
        The model, with a pinned opset (`OPSET`) and IR version (`IR_VERSION`).

    Raises:
        LoweringError: AF3001 for an unknown activation, AF3002 for inconsistent layer shapes.
    """
    _check_shapes(network)
    # Built in place: make_graph/make_model copy every initializer once more, ~0.3 s per 200 MB.
    model = onnx.ModelProto(ir_version=IR_VERSION, producer_name="af", producer_version=__version__)
    model.opset_import.append(helper.make_opsetid("", OPSET))
    graph = model.graph
    graph.name = graph_name
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, network.input_size]))
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, network.output_size])
    )
    if network.labels:
        model.metadata_props.add(key=LABELS_METADATA, value=json.dumps(list(network.labels)))
    x = _add_normalization(graph, network, with_data) if network.normalized else INPUT_NAME
    last = len(network.layers) - 1
    for layer in network.layers:
        activation = network.output_activation if layer.index == last else layer.activation
        out = OUTPUT_NAME if layer.index == last else f"layers.{layer.index}.out"
        graph.node.extend(_layer_nodes(layer, activation, x, out))
        _add_initializer(graph, f"layers.{layer.index}.weight", layer.weight, with_data)
        _add_initializer(graph, f"layers.{layer.index}.bias", layer.bias, with_data)
        if weights_as_inputs:
            for part, array in (("weight", layer.weight), ("bias", layer.bias)):
                graph.input.append(helper.make_tensor_value_info(f"layers.{layer.index}.{part}", TensorProto.FLOAT,
                                                                 list(array.shape)))
        x = out
    return model


def _add_normalization(graph: onnx.GraphProto, network: NetworkSpec, with_data: bool) -> str:
    """Add ``(input - input.mean) / input.scale`` (a Sub and a Div, StandardScaler's arithmetic); return its output."""
    graph.node.extend([
        helper.make_node("Sub", [INPUT_NAME, "input.mean"], ["input.centred"], name="input.normalize.sub"),
        helper.make_node("Div", ["input.centred", "input.scale"], ["input.normalized"], name="input.normalize.div"),
    ])
    _add_initializer(graph, "input.mean", network.input_mean, with_data)
    _add_initializer(graph, "input.scale", network.input_scale, with_data)
    return "input.normalized"


def _normalization_arrays(network: NetworkSpec) -> list[Any]:
    """The normalisation's initializers, in the order `lower_network` adds them (before the layers')."""
    return [network.input_mean, network.input_scale] if network.normalized else []


def _add_initializer(graph: onnx.GraphProto, name: str, array: Any, with_data: bool = True) -> None:
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type = TensorProto.FLOAT
    tensor.dims.extend(array.shape)
    if with_data:
        tensor.raw_data = array.astype("<f4", copy=False).tobytes()


#: protobuf field numbers used when splicing the weights into a serialized model (onnx.proto3)
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _model_parts(skeleton: onnx.ModelProto, arrays: list[Any]) -> list[Any]:
    """Serialize ``skeleton`` with ``arrays`` as its initializers' raw_data, as buffers to join.

    Protobuf writes fields in field-number order, and serialized messages concatenate as a merge, so
    the pieces (model fields before ``graph``, graph fields before ``initializer``, each initializer
    then its raw_data (field 9, after dims, data_type and name), the rest) joined are byte for byte
    ``SerializeToString()`` of the full model; tests compare the two.
    """
    graph = skeleton.graph
    head, rest = onnx.ModelProto(), onnx.ModelProto()
    head.CopyFrom(skeleton)
    head.ClearField("graph")
    head.ClearField("opset_import")
    head.ClearField("metadata_props")
    rest.opset_import.extend(skeleton.opset_import)  # fields 8 and 14 come after the graph (7)
    rest.metadata_props.extend(skeleton.metadata_props)
    graph_head, graph_rest = onnx.GraphProto(node=graph.node, name=graph.name), onnx.GraphProto()
    graph_rest.CopyFrom(graph)
    for name in ("node", "name", "initializer"):
        graph_rest.ClearField(name)
    graph_parts: list[Any] = [graph_head.SerializeToString()]
    for tensor, array in zip(graph.initializer, arrays):
        data = memoryview(np.ascontiguousarray(array, dtype="<f4").reshape(-1).view(np.uint8))
        head_bytes = tensor.SerializeToString() + field_head(_TENSOR_RAW_DATA, data.nbytes)
        graph_parts += [field_head(_GRAPH_INITIALIZER, len(head_bytes) + data.nbytes) + head_bytes, data]
    graph_parts.append(graph_rest.SerializeToString())
    graph_size = sum(len(part) if isinstance(part, bytes) else part.nbytes for part in graph_parts)
    return [head.SerializeToString(), field_head(_MODEL_GRAPH, graph_size), *graph_parts, rest.SerializeToString()]


def network_model_bytes(network: NetworkSpec, *, graph_name: str = "agent", weights_as_inputs: bool = False) -> bytes:
    """Lower, serialize and check a network's model, copying each weight once (into the result).

    The same bytes as ``model_bytes(lower_network(network, graph_name=graph_name))``, about 5x faster on a
    200 MB network: protobuf never holds the weights (`_model_parts`), and the checker's shape inference
    runs on the weightless skeleton (`_check_bytes`).

    Args:
        network: the network; weights float32 ``[out, in]``.
        graph_name: the graph's name (the agent's name).
        weights_as_inputs: see `lower_network`.

    Returns:
        The serialized model, checked by ``onnx.checker.check_model(full_check=True)``.

    Raises:
        LoweringError: AF3001 for an unknown activation, AF3002 for inconsistent layer shapes, AF3007
            when the model exceeds protobuf's 2 GiB, AF3003 when the checker refuses it.
    """
    skeleton = lower_network(network, graph_name=graph_name, with_data=False, weights_as_inputs=weights_as_inputs)
    arrays = _normalization_arrays(network) + [array for layer in network.layers for array in (layer.weight, layer.bias)]
    _ensure_size(skeleton)
    return _check_bytes(b"".join(_model_parts(skeleton, arrays)), skeleton=skeleton)


def model_bytes(model: onnx.ModelProto) -> bytes:
    """Serialize a model and check it with ``onnx.checker.check_model(full_check=True)``.

    Args:
        model: a model from `lower_network`.

    Returns:
        The serialized model.

    Raises:
        LoweringError: AF3007 when the model exceeds protobuf's 2 GiB, AF3003 when the checker refuses it.
    """
    _ensure_size(model)
    return _check_bytes(model.SerializeToString())


def _ensure_size(model: onnx.ModelProto) -> None:
    # the initializers dominate; ByteSize() or len(raw_data) would each cost a copy of every weight
    size = onnx_model_bytes(sum(math.prod(t.dims) for t in model.graph.initializer))
    if size > MAX_MODEL_BYTES:
        raise LoweringError(
            f"the ONNX model would take about {size} bytes, more than protobuf's 2 GiB",
            code="AF3007",
            hint="use a smaller network or `--target wasm` only",
        )


def _check_bytes(data: bytes, *, skeleton: onnx.ModelProto | None = None) -> bytes:
    """Check ``data`` as ``check_model(data, full_check=True)`` does; with ``skeleton`` (the same model
    without initializer data), its shape-inference half runs on the skeleton.

    ``full_check`` is the checker plus strict shape inference (``InferShapes`` with check_type, strict
    errors, no data propagation), which copies the parsed model: 200 MB more fresh memory for a
    50M-parameter network. Shape inference reads initializers' types and dims, never their values
    (Gemm, the activations and the normalisation's Sub/Div use only the types and dims of their
    constants), so inferring on the skeleton decides the same.

    Above `LEAN_CHECK_BYTES` the checker's half runs on the skeleton too, its initializers emptied:
    parsing ``data`` would hold a second copy of every weight (`af run big.af` peaked at 3x the
    weights). What the checker reads of an initializer's data is that its size fits its dims, which
    `_model_parts` guarantees (each raw_data is the very array whose shape gave the dims); that the
    spliced bytes frame as protobuf is what tests/afc/test_lower_onnx.py holds against
    ``SerializeToString``.
    """
    try:
        if skeleton is None:
            onnx.checker.check_model(data, full_check=True)
        else:
            onnx.checker.check_model(data if len(data) <= LEAN_CHECK_BYTES else _structure_of(skeleton))
            onnx.shape_inference.infer_shapes(skeleton, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise LoweringError(f"the generated ONNX model is invalid: {exc}", code="AF3003",
                            hint="this is a bug in af: please report it") from None
    return data


def _structure_of(skeleton: onnx.ModelProto) -> onnx.ModelProto:
    """``skeleton`` with each initializer an empty tensor (dims ``[0]``): what the checker reads of a
    model's graph, nodes, names and opsets, without any weight."""
    structure = onnx.ModelProto()
    structure.CopyFrom(skeleton)
    for tensor in structure.graph.initializer:
        del tensor.dims[:]
        tensor.dims.append(0)
        tensor.raw_data = b""
    return structure


def model_text(model: onnx.ModelProto) -> str:
    """Return the model in ONNX's textual syntax, initializers declared but their values left out.

    Args:
        model: a model from `lower_network`.

    Returns:
        Text for people (``af compile --emit onnx``); a weight listing would run to megabytes.
    """
    import onnx.printer

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.initializer[:]
    declarations = [
        f"# initializer {t.name}: {onnx.helper.tensor_dtype_to_np_dtype(t.data_type)}{list(t.dims)}"
        for t in model.graph.initializer
    ]
    return "\n".join([*declarations, onnx.printer.to_text(bare)])


def _iter_graphs(graph: onnx.GraphProto) -> Any:
    """Yield ``graph`` and every subgraph in its nodes' attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _iter_graphs(sub)


def check_model_bytes(data: bytes) -> onnx.ModelProto:
    """Parse an ONNX model taken from a bundle and refuse what a bundle must never hold.

    Args:
        data: the serialized model.

    Returns:
        The parsed model.

    Raises:
        BundleError: AF4020 when it does not parse, AF4021 when a tensor uses external data,
            AF4022 when it imports or uses an operator domain other than the default ONNX one.
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError type
        raise BundleError(f"model.onnx is not a valid ONNX model: {exc}", code="AF4020") from None
    graphs = list(_iter_graphs(model.graph))
    tensors = [t for g in graphs for t in (*g.initializer, *(s.values for s in g.sparse_initializer))]
    tensors += [a.t for g in graphs for n in g.node for a in n.attribute if a.HasField("t")]
    for tensor in tensors:
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise BundleError(f"model.onnx tensor {tensor.name!r} uses external data", code="AF4021",
                              hint="a bundle's model must be self-contained; compile the .af again")
    domains = {o.domain for o in model.opset_import} | {n.domain for g in graphs for n in g.node}
    custom = sorted(d for d in domains if d not in ("", "ai.onnx"))
    if custom or model.functions:
        raise BundleError(f"model.onnx uses custom operator domains {custom or ['(local functions)']}",
                          code="AF4022", hint="af bundles use standard ONNX operators only; compile the .af again")
    return model
