"""The runtime's ONNX protobuf loading: parse a bundle's model and refuse what reaches outside the sandbox.

The one place the runtime reads ONNX protobuf. It parses with onnx's own generated classes
(``onnx_ml_pb2``) loaded without ``import onnx`` (~150 ms, see `_onnx_pb2`), consumes every byte as
`onnx.load_model_from_string` does, and refuses external data and non-standard operator domains
before onnxruntime sees the model. Tested on its own in tests/afrt/test_onnxproto.py.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator

from afcore.errors import SandboxViolation

from ._errormap import map_onnx_parse_errors

__all__ = ["ALLOWED_DOMAINS", "ensure_safe_onnx", "parse_model"]

#: operator-set domains an agent model may use: the standard ONNX operators only
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})


#: onnx's generated protobuf module, once loaded (see `_onnx_pb2`)
_PB2: Any = None


def _onnx_pb2() -> Any:
    """Return onnx's generated protobuf module (``ModelProto``, ``TensorProto``) without ``import onnx``.

    Importing the onnx package costs ~150 ms (its helpers, reference ops, json_format); the
    generated module alone, loaded from the installed onnx, costs ~20 ms and parses the same
    messages with the same classes (protobuf keeps one class per descriptor, so a later
    ``import onnx`` in this process shares them).
    """
    global _PB2
    if _PB2 is None:
        onnx = sys.modules.get("onnx")
        if onnx is not None:
            _PB2 = onnx.onnx_ml_pb2
        else:
            import importlib.util
            import os

            origin = importlib.util.find_spec("onnx").origin
            spec = importlib.util.spec_from_file_location(
                "afrt._onnx_ml_pb2", os.path.join(os.path.dirname(origin), "onnx_ml_pb2.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _PB2 = module
    return _PB2


def parse_model(model_bytes: bytes) -> Any:
    """Parse a ModelProto as `onnx.load_model_from_string` does (every byte must be consumed).

    Raises:
        google.protobuf.message.DecodeError: the bytes are not a ModelProto (callers map it).
    """
    from google.protobuf.message import DecodeError

    model = _onnx_pb2().ModelProto()
    decoded = model.ParseFromString(model_bytes)
    if decoded is not None and decoded != len(model_bytes):
        raise DecodeError(f"Protobuf decoding consumed too few bytes: {decoded} out of {len(model_bytes)}")
    return model


def _iter_graph_tensors(graph) -> Iterator[tuple[str, object]]:
    """Yield (where, TensorProto) for every tensor of a graph, its nodes' attributes and subgraphs."""
    for tensor in graph.initializer:
        yield f"initializer `{tensor.name}`", tensor
    for sparse in graph.sparse_initializer:
        yield from _sparse_parts(f"sparse initializer `{sparse.values.name}`", sparse)
    for node in graph.node:
        for attr in node.attribute:
            where = f"attribute `{attr.name}` of node `{node.name or node.op_type}`"
            if attr.HasField("t"):
                yield where, attr.t
            for tensor in attr.tensors:
                yield where, tensor
            for sparse in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
                yield from _sparse_parts(where, sparse)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _iter_graph_tensors(sub)


def _sparse_parts(where: str, sparse) -> Iterator[tuple[str, object]]:
    # Both the values and the indices of a sparse tensor are TensorProtos that may be external.
    yield where, sparse.values
    yield f"{where} (its indices)", sparse.indices


def _iter_node_domains(graph) -> Iterator[tuple[str, str]]:
    for node in graph.node:
        yield node.domain, node.op_type
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _iter_node_domains(sub)


def ensure_safe_onnx(model_bytes: bytes, *, member: str = "model.onnx") -> None:
    """Refuse a model that reaches outside the sandbox.

    Args:
        model_bytes: the serialized ModelProto.
        member: the bundle member name, for messages.

    Raises:
        BundleError: AF5043 when the bytes are not an ONNX model.
        SandboxViolation: AF5021 for external data, AF5022 for a non-standard operator domain
            or model-local functions.
    """
    with map_onnx_parse_errors(member):
        model = parse_model(bytes(model_bytes))
    external = _onnx_pb2().TensorProto.EXTERNAL
    for where, tensor in _iter_graph_tensors(model.graph):
        if tensor.data_location == external or len(tensor.external_data):
            raise SandboxViolation(
                f"`{member}` keeps {where} in an external file, and agents may not read files",
                code="AF5021",
                hint="bundle models hold their weights inline; recompile the bundle with `af compile`",
            )
    domains = [(imp.domain, "opset import") for imp in model.opset_import]
    domains += [(domain, f"operator `{op}`") for domain, op in _iter_node_domains(model.graph)]
    # A model-local function is a custom operator by definition, whatever its domain.
    bad = [(f.domain, f"local function `{f.name}`") for f in model.functions]
    bad += [(domain, what) for domain, what in domains if domain not in ALLOWED_DOMAINS]
    if bad:
        domain, what = bad[0]
        raise SandboxViolation(
            f"`{member}` uses {what} from domain `{domain}`, and agents may use standard operators only",
            code="AF5022",
            hint="custom operators need native libraries outside the sandbox; recompile with `af compile`",
        )
