"""The runtime's ONNX protobuf loading: parse a bundle's model and refuse what reaches outside the sandbox.

The one place the runtime reads ONNX protobuf. It parses with onnx's own generated classes
(``onnx_ml_pb2``) loaded without ``import onnx`` (~150 ms, see `_onnx_pb2`), consumes every byte as
`onnx.load_model_from_string` does, and refuses external data and non-standard operator domains
before onnxruntime sees the model. Tested on its own in tests/afrt/test_onnxproto.py.

`strip_initializer_data` lets the check run on a big model without a second copy of its weights:
it walks the serialized model (the wire format of the few messages on the way to
``graph.initializer``) and returns it without the big initializers' ``raw_data``, which the check
never looks at; parsing the whole model made protobuf copy every weight.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator

from afcore.errors import SandboxViolation
from afcore.protowire import LENGTH_DELIMITED as _LEN
from afcore.protowire import field_head

from ._errormap import map_onnx_parse_errors

__all__ = ["ALLOWED_DOMAINS", "STRIP_MIN_BYTES", "ensure_safe_onnx", "ensure_safe_onnx_file", "parse_model",
           "strip_initializer_data"]

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


def ensure_safe_onnx_file(path: str, *, member: str = "model.onnx") -> None:
    """`ensure_safe_onnx` of a model in a file, which is mapped: its weights are never read.

    Raises:
        As `ensure_safe_onnx`.
    """
    import mmap

    with open(path, "rb") as handle:
        if not os.fstat(handle.fileno()).st_size:
            return ensure_safe_onnx(b"", member=member)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            model = strip_initializer_data(mapped)
    ensure_safe_onnx(model, member=member)


def ensure_safe_onnx(model_bytes: bytes, *, member: str = "model.onnx") -> None:
    """Refuse a model that reaches outside the sandbox.

    The check parses the model without its big initializers' data (`strip_initializer_data`),
    which it never looks at: protobuf would copy every weight.

    Args:
        model_bytes: the serialized ModelProto.
        member: the bundle member name, for messages.

    Raises:
        BundleError: AF5043 when the bytes are not an ONNX model.
        SandboxViolation: AF5021 for external data, AF5022 for a non-standard operator domain
            or model-local functions.
    """
    with map_onnx_parse_errors(member):
        model = parse_model(strip_initializer_data(model_bytes))
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



#: ``raw_data`` fields of at least this many bytes are left out of what `strip_initializer_data`
#: returns; smaller ones stay (protobuf copies them, which costs nothing worth noticing)
STRIP_MIN_BYTES = 1 << 16
#: field numbers of onnx.proto on the way to an initializer's data: ModelProto.graph,
#: GraphProto.initializer, TensorProto.raw_data
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


class _Malformed(Exception):
    """The bytes are not well-framed protobuf: left to the parser, which says why."""


def strip_initializer_data(model: Any, *, min_bytes: int = STRIP_MIN_BYTES) -> bytes:
    """Return a serialized model without its big initializers' data, read without copying the data.

    Walks the protobuf wire format of the model, its ``graph`` and each initializer of the graph,
    and leaves out every ``raw_data`` field of an initializer of at least ``min_bytes`` (adjusting
    the lengths around it). Everything else is kept byte for byte, so `ensure_safe_onnx` of the
    result decides as it would on the whole model: it looks at tensors' data locations, external
    data and operator domains, never at ``raw_data``. Only the bytes around the weights are read,
    so a model in a memory-mapped file is checked without reading its weights into memory.
    Bytes that are not well-framed, or a model with more than one ``graph`` field (protobuf
    merges them), are returned whole, for the parser to judge.

    Args:
        model: a serialized ModelProto (bytes, or an `mmap.mmap` of a file).
        min_bytes: the smallest ``raw_data`` left out.

    Returns:
        The model's bytes, without those fields.
    """
    try:
        found = _find_big_data(model, min_bytes)
    except _Malformed:
        found = None
    if found is None:
        return bytes(model)
    graph, spans = found
    view = memoryview(model)
    try:
        return _without(view, graph, spans)
    finally:
        view.release()  # an mmap cannot close while a view of it exists


class _Span:
    """One field: its whole extent, and where its payload starts."""

    __slots__ = ("start", "payload", "end")

    def __init__(self, start: int, payload: int, end: int) -> None:
        self.start, self.payload, self.end = start, payload, end


def _varint(data: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _iter_fields(data: Any, pos: int, end: int) -> Iterator[tuple[int, int, _Span]]:
    """Yield (field number, wire type, extent) of each field in ``data[pos:end]``."""
    while pos < end:
        start = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos, end)
            payload = pos
        elif wire == _LEN:
            size, payload = _varint(data, pos, end)
            pos = payload + size
        elif wire in (1, 5):
            payload, pos = pos, pos + (8 if wire == 1 else 4)
        else:  # groups: not in onnx.proto
            raise _Malformed
        if number == 0 or pos > end:
            raise _Malformed
        yield number, wire, _Span(start, payload, pos)


def _find_big_data(data: Any, min_bytes: int) -> tuple[_Span, list[tuple[_Span, list[_Span]]]] | None:
    """The graph field, and each initializer with its raw_data fields of at least ``min_bytes``."""
    graphs = [span for number, wire, span in _iter_fields(data, 0, len(data)) if number == _MODEL_GRAPH]
    if len(graphs) != 1 or graphs[0].payload == graphs[0].end or _wire(data, graphs[0]) != _LEN:
        return None
    graph = graphs[0]
    found = []
    for number, wire, tensor in _iter_fields(data, graph.payload, graph.end):
        if number != _GRAPH_INITIALIZER or wire != _LEN or tensor.end - tensor.payload < min_bytes:
            continue
        big = [raw for field, kind, raw in _iter_fields(data, tensor.payload, tensor.end)
               if field == _TENSOR_RAW_DATA and kind == _LEN and raw.end - raw.payload >= min_bytes]
        if big:
            found.append((tensor, big))
    return (graph, found) if found else None


def _wire(data: Any, span: _Span) -> int:
    return _varint(data, span.start, span.end)[0] & 7


def _without(view: memoryview, graph: _Span, tensors: list[tuple[_Span, list[_Span]]]) -> bytes:
    """The model with the given raw_data fields left out and the lengths around them adjusted."""
    graph_parts: list[bytes] = []
    pos = graph.payload
    for tensor, raws in tensors:
        body, at = [], tensor.payload
        for raw in raws:
            body.append(bytes(view[at : raw.start]))
            at = raw.end
        body.append(bytes(view[at : tensor.end]))
        graph_parts += [bytes(view[pos : tensor.start]), field_head(_GRAPH_INITIALIZER, sum(map(len, body))), *body]
        pos = tensor.end
    graph_parts.append(bytes(view[pos : graph.end]))
    graph_body = b"".join(graph_parts)
    return b"".join([bytes(view[: graph.start]), field_head(_MODEL_GRAPH, len(graph_body)), graph_body,
                     bytes(view[graph.end :])])
