"""The ONNX backend: checks a bundle's model and wraps one onnxruntime `InferenceSession`.

The model is inspected before onnxruntime sees it: a model may not refer to external data files
(onnxruntime would open them) nor use operators outside the standard domain (they need native
custom-op libraries). The check reads the few fields it needs straight from the protobuf wire
format (`_read_model`), which costs well under a millisecond where importing protobuf and onnx's
generated classes cost ~20 ms of `af run`'s start-up; onnx's classes are used only to name the
fault in a model the reader finds malformed. The session is created once per loaded bundle and
shared by all replicas: ``InferenceSession.run`` is thread-safe and releases the GIL.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterator

import numpy as np

from afcore.errors import BundleError, SandboxViolation

from ._errormap import OnnxCallErrors, map_onnx_load_errors, map_onnx_parse_errors

__all__ = ["ALLOWED_DOMAINS", "OnnxModel", "ensure_safe_onnx", "session_threads"]

#: operator-set domains an agent model may use: the standard ONNX operators only
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})


def session_threads(cpu_cores: float | None, threads: int | None = None) -> int:
    """Return onnxruntime's ``intra_op_num_threads``: ``threads`` if given, else ``ceil(cpu_cores)``, at least 1.

    Args:
        cpu_cores: ``resources.limits.cpu_cores`` of the manifest (None when absent).
        threads: an explicit override (`afrt.load(threads=...)`).
    """
    if threads is not None:
        return max(1, int(threads))
    return max(1, math.ceil(cpu_cores)) if cpu_cores else 1


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


def _parse_model(model_bytes: bytes) -> Any:
    """Parse a ModelProto as `onnx.load_model_from_string` does (every byte must be consumed)."""
    from google.protobuf.message import DecodeError

    model = _onnx_pb2().ModelProto()
    decoded = model.ParseFromString(model_bytes)
    if decoded is not None and decoded != len(model_bytes):
        raise DecodeError(f"Protobuf decoding consumed too few bytes: {decoded} out of {len(model_bytes)}")
    return model


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf message (at the levels `_read_model` reads)."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip_group(data: memoryview, pos: int, number: int) -> int:
    while True:
        key, pos = _varint(data, pos)
        if key >> 3 == 0 or key > 0xFFFFFFFF:
            raise _Malformed
        if key & 7 == 4:
            if key >> 3 != number:
                raise _Malformed
            return pos
        pos = _skip_value(data, pos, key)


def _skip_value(data: memoryview, pos: int, key: int) -> int:
    wire = key & 7
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 1:
        pos += 8
    elif wire == 2:
        size, pos = _varint(data, pos)
        pos += size
    elif wire == 3:
        return _skip_group(data, pos, key >> 3)
    elif wire == 5:
        pos += 4
    else:  # an end-group without its start, or wire types 6 and 7
        raise _Malformed
    if pos > len(data):
        raise _Malformed
    return pos


def _fields(data: memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for each field of a message, in wire order.

    The value is the integer of a varint, a memoryview of a length-delimited field (a string or an
    embedded message) and None for fixed-width fields and groups, which are skipped.
    """
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0 or key > 0xFFFFFFFF:
            raise _Malformed
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _Malformed
            value, pos = data[pos : pos + size], pos + size
        else:
            value, pos = None, _skip_value(data, pos, key)
        yield number, wire, value


def _merged(parts: list[memoryview]) -> memoryview:
    # Protobuf merges the occurrences of a singular embedded message: it reads their concatenation.
    return parts[0] if len(parts) == 1 else memoryview(b"".join(parts))


def _text(raw: bytes) -> str | bytes:
    # protobuf gives a proto2 string that is not UTF-8 as bytes (messages then show b'...')
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


class _Message:
    """The fields of one message that the check reads, with the names of onnx's generated classes.

    ``FIELDS`` maps a field number to (attribute, kind, class): ``str`` a singular string (the last
    occurrence wins), ``loc`` the singular closed enum ``TensorProto.DataLocation``, ``msg`` a
    singular message (occurrences merged; an absent one reads as empty, as in protobuf), ``list``
    a repeated message (wire order).
    """

    __slots__ = ("_present",)
    FIELDS: dict[int, tuple[str, str, Any]] = {}

    def __init__(self, data: memoryview, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise _Malformed  # protobuf says whether it reads a model this deep
        found: dict[int, Any] = {}
        for number, wire, value in _fields(data):
            kind = self.FIELDS[number][1] if number in self.FIELDS else None
            if kind == "loc":
                # int32 enums keep the low 32 bits; protobuf sets values of a closed enum it knows only
                if wire == 0 and value & 0xFFFFFFFF in (_DEFAULT, _EXTERNAL):
                    found[number] = value & 0xFFFFFFFF
            elif kind is not None and wire == 2:  # another wire type: protobuf keeps it as an unknown field
                if kind == "str":
                    found[number] = value
                else:
                    found.setdefault(number, []).append(value)
        self._present = set()
        for number, (name, kind, cls) in self.FIELDS.items():
            value = found.get(number)
            if kind == "str":
                value = _text(bytes(value or b""))
            elif kind == "loc":
                value = value or _DEFAULT
            elif kind == "list":
                value = [cls(part, depth + 1) for part in value or ()]
            elif kind == "msg":
                if value:
                    self._present.add(name)
                value = cls(_merged(value) if value else memoryview(b""), depth + 1)
            setattr(self, name, value)

    def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name: the check reads both kinds
        """Return whether the singular message field ``name`` was present."""
        return name in self._present


#: `TensorProto.DataLocation`: data in the tensor, or in an external file
_DEFAULT, _EXTERNAL = 0, 1
#: the deepest nesting of messages read (protobuf's upb parser refuses more than 100 by default);
#: it also bounds the recursion of the reader and of the check
_MAX_DEPTH = 100


class _Entry(_Message):
    """A ``StringStringEntryProto`` of ``external_data``: only counted (no field is read)."""

    __slots__ = ()


class _Tensor(_Message):
    __slots__ = ("name", "external_data", "data_location")


class _SparseTensor(_Message):
    __slots__ = ("values",)


class _Graph(_Message):
    __slots__ = ("node", "initializer", "sparse_initializer")


class _Node(_Message):
    __slots__ = ("name", "op_type", "domain", "attribute")


class _Attribute(_Message):
    __slots__ = ("name", "t", "g", "tensors", "graphs")


class _OperatorSetId(_Message):
    __slots__ = ("domain",)


class _Function(_Message):
    __slots__ = ("name", "domain")


class _Model(_Message):
    __slots__ = ("graph", "opset_import", "functions")


# Field numbers from onnx/onnx-ml.proto. Sparse tensors in attributes, the indices of sparse
# initializers and training graphs are not read: the protobuf-based check this reader replaced did
# not look there either.
_Tensor.FIELDS = {8: ("name", "str", None), 13: ("external_data", "list", _Entry), 14: ("data_location", "loc", None)}
_SparseTensor.FIELDS = {1: ("values", "msg", _Tensor)}
_Graph.FIELDS = {1: ("node", "list", _Node), 5: ("initializer", "list", _Tensor),
                 15: ("sparse_initializer", "list", _SparseTensor)}
_Node.FIELDS = {3: ("name", "str", None), 4: ("op_type", "str", None), 5: ("attribute", "list", _Attribute),
                7: ("domain", "str", None)}
_Attribute.FIELDS = {1: ("name", "str", None), 5: ("t", "msg", _Tensor), 6: ("g", "msg", _Graph),
                     10: ("tensors", "list", _Tensor), 11: ("graphs", "list", _Graph)}
_OperatorSetId.FIELDS = {1: ("domain", "str", None)}
_Function.FIELDS = {1: ("name", "str", None), 10: ("domain", "str", None)}
_Model.FIELDS = {7: ("graph", "msg", _Graph), 8: ("opset_import", "list", _OperatorSetId),
                 25: ("functions", "list", _Function)}


def _read_model(model_bytes: bytes | memoryview) -> _Model:
    """Read what `ensure_safe_onnx` checks of a serialized ModelProto, as protobuf would parse it.

    Repeated fields keep their wire order, occurrences of a singular message are merged, the last
    occurrence of a string wins, known fields with another wire type and unknown fields are
    skipped; every level read is checked to be well-formed protobuf (the rest is onnxruntime's).

    Raises:
        _Malformed: the bytes are not a protobuf message at one of the levels read.
    """
    return _Model(memoryview(model_bytes))


def _iter_graph_tensors(graph) -> Iterator[tuple[str, object]]:
    """Yield (where, TensorProto) for every tensor of a graph, its nodes' attributes and subgraphs."""
    for tensor in graph.initializer:
        yield f"initializer `{tensor.name}`", tensor
    for sparse in graph.sparse_initializer:
        yield f"sparse initializer `{sparse.values.name}`", sparse.values
    for node in graph.node:
        for attr in node.attribute:
            where = f"attribute `{attr.name}` of node `{node.name or node.op_type}`"
            if attr.HasField("t"):
                yield where, attr.t
            for tensor in attr.tensors:
                yield where, tensor
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _iter_graph_tensors(sub)


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
    try:
        model = _read_model(model_bytes)
    except _Malformed:
        # protobuf names the fault, as before; should it read bytes this reader refuses, it is
        # checked as this reader's result would be
        with map_onnx_parse_errors(member):
            model = _parse_model(bytes(model_bytes))
    for where, tensor in _iter_graph_tensors(model.graph):
        if tensor.data_location == _EXTERNAL or len(tensor.external_data):
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


class OnnxModel:
    """One onnxruntime session for a bundle's model, shared by the replicas of an agent.

    Args:
        model_bytes: the checked model (see `ensure_safe_onnx`).
        agent: the agent's name, for errors.
        input_name: the graph input (manifest ``network.input.name``).
        output_name: the graph output (manifest ``network.output.name``).
        threads: ``intra_op_num_threads`` (see `session_threads`).

    Raises:
        BundleError: AF5043 when onnxruntime refuses the model.
    """

    def __init__(self, model_bytes: bytes, *, agent: str, input_name: str, output_name: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: warnings would go to stderr, bypassing diagnostics
        try:
            with map_onnx_load_errors("model.onnx"):
                self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        except BundleError:
            # `ensure_safe_onnx` reads only some levels of the model; for bytes that protobuf
            # refuses elsewhere, say so as the check did when it parsed the whole model
            with map_onnx_parse_errors("model.onnx"):
                _parse_model(bytes(model_bytes))
            raise
        self.agent = agent
        self.threads = threads
        self.input_name, self.output_name = input_name, output_name
        self._outputs = [output_name]
        self._errors = OnnxCallErrors(agent)

    def ensure_signature(self, input_size: int, output_size: int) -> None:
        """Check the graph's input and output against the manifest's network signature.

        Raises:
            BundleError: AF5046 on a different name or width.
        """
        for kind, args, name, width in (
            ("input", self.session.get_inputs(), self.input_name, input_size),
            ("output", self.session.get_outputs(), self.output_name, output_size),
        ):
            shapes = {arg.name: arg.shape for arg in args}
            shape = shapes.get(name)
            if len(args) != 1 or shape is None or len(shape) != 2 or shape[1] != width:
                raise BundleError(
                    f"model.onnx's {kind} is {shapes}, but the manifest declares `{name}` with width {width}",
                    code="AF5046",
                    hint="the bundle's members disagree; recompile it with `af compile`",
                )

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run a batch.

        Args:
            inputs: float32 ``[n, input_size]``.

        Returns:
            float32 ``[n, output_size]``.

        Raises:
            InferenceError: AF5033 when onnxruntime fails.
        """
        with self._errors:
            return self.session.run(self._outputs, {self.input_name: inputs})[0]

    def replica(self) -> OnnxModel:
        """Return the model itself: replicas share the session, whose ``run`` is thread-safe."""
        return self

    def close(self) -> None:
        """Do nothing: the session is shared by the replicas and freed with the last reference."""
