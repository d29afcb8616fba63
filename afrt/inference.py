"""The ONNX backend: checks a bundle's model and wraps one onnxruntime `InferenceSession`.

The model is inspected with onnx's own protobuf classes before onnxruntime sees it: a model may
not refer to external data files (onnxruntime would open them) nor use operators outside the
standard domain (they need native custom-op libraries). The session is created once per loaded bundle and shared by all
replicas: ``InferenceSession.run`` is thread-safe and releases the GIL.
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
        model = _parse_model(bytes(model_bytes))
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
        with map_onnx_load_errors("model.onnx"):
            self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
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
