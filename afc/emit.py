"""Put an agent's manifest and members together and write the bundle (`afcore.bundle.write_bundle`).

The manifest is the contract with the runtime (schema: ``schemas/afb-manifest-1.0.schema.json``,
prose: docs/bundle.md). It holds no timestamp but the source's own ``created``/``modified`` and no
absolute path (step spans name the source by its basename), so that the same .af gives the same
bundle on any machine.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from afcore import __version__
from afcore.bundle import Member, write_bundle
from afcore.manifest import (
    TARGETS,
    AgentInfo,
    LayerInfo,
    Manifest,
    NetworkInfo,
    OnnxInfo,
    SourceInfo,
    TensorInfo,
    WasmInfo,
)

from .spec import WORKFLOW_NAMES
from .tensors import encode_tensors

if TYPE_CHECKING:
    from afcore.steps import Step

    from .spec import AgentSpec, NetworkSpec

__all__ = [
    "Lowered",
    "build_manifest",
    "build_members",
    "emit_bundle",
    "network_info",
    "safetensors_parts",
    "weights_member",
]



@dataclass(frozen=True)
class Lowered:
    """What the backends produced for one agent.

    Attributes:
        onnx: the serialized, checked ONNX model, or None without the onnx target.
        opset: the model's ONNX opset.
        ir_version: the model's IR version.
        wasm: the WebAssembly module (`afc.lower_wasm.WasmModule`), or None without the wasm target.
        digests: sha256 (hex) of bundle members already hashed while lowering, by member name
            (`afc.compile.lower_agent` hashes big networks' members in threads); the writer hashes the rest.
    """

    onnx: bytes | None = None
    opset: int | None = None
    ir_version: int | None = None
    wasm: Any = None
    digests: Mapping[str, str] = field(default_factory=dict)


def network_info(network: NetworkSpec) -> NetworkInfo:
    """Return the ``network`` part of the manifest: signature, layers, activations, parameter count."""
    last = len(network.layers) - 1
    return NetworkInfo(
        input=TensorInfo("input", network.input_size),
        output=TensorInfo("output", network.output_size),
        layers=tuple(
            LayerInfo(
                index=layer.index,
                in_size=layer.in_size,
                out_size=layer.out_size,
                activation=network.output_activation if layer.index == last else layer.activation,
                parameters=layer.parameters,
            )
            for layer in network.layers
        ),
        hidden_activation=network.hidden_activation,
        output_activation=network.output_activation,
        parameters=network.parameters,
        learning_rate=network.learning_rate,
        labels=network.labels,
    )


def _text(value: object) -> str | None:
    # YAML may hand over a timestamp object for an unquoted date; the manifest keeps text
    return None if value is None else str(value)


def _step_in_bundle(step: Step, source_name: str) -> Step:
    # spans name the source by its basename: no absolute path in a bundle
    return replace(step, span={**step.span, "path": source_name}) if step.span else step


def build_manifest(spec: AgentSpec, lowered: Lowered) -> Manifest:
    """Return the manifest of an agent's bundle, without ``members`` (`write_bundle` adds them).

    Args:
        spec: the agent.
        lowered: the backends' results; a None target is left out.

    Returns:
        The `afcore.manifest.Manifest` documented in docs/bundle.md (`Manifest.to_json` for its JSON).
    """
    source_name = os.path.basename(spec.source_path)
    return Manifest(
        agent=AgentInfo(spec.name, str(spec.version), _text(spec.description), _text(spec.author)),
        compiler=("af", __version__),
        source=SourceInfo(source_name, spec.source_sha256, _text(spec.created), _text(spec.modified)),
        network=network_info(spec.network),
        targets=tuple(t for t in TARGETS if getattr(lowered, t) is not None),
        limits=dict(spec.resources.limits),
        requirements=dict(spec.resources.requirements),
        workflows={
            name: tuple(_step_in_bundle(step, source_name) for step in spec.workflows[name].steps)
            if name in spec.workflows else ()
            for name in WORKFLOW_NAMES
        },
        onnx=OnnxInfo("model.onnx", lowered.opset, lowered.ir_version) if lowered.onnx is not None else None,
        wasm=WasmInfo("model.wasm", lowered.wasm.abi, lowered.wasm.max_batch, lowered.wasm.memory_pages)
        if lowered.wasm is not None else None,
    )


def safetensors_parts(tensors: Mapping[str, np.ndarray]) -> list[Any]:
    """Return a safetensors file of float32 tensors as buffers to write in turn, without copying the arrays.

    The same bytes as ``safetensors.numpy.save`` (tests compare them), which would copy 200 MB of weights
    twice (``tobytes``, then into the file): an 8-byte little-endian header length, the compact JSON
    header (tensors sorted by name, ``data_offsets`` in that order) padded with spaces to 8 bytes, the data.
    Other dtypes go through `afc.tensors.encode_tensors`.

    Args:
        tensors: arrays by name.

    Returns:
        The buffers (bytes and byte views of the arrays); their concatenation is the file.

    Raises:
        UsageError: AF0911 for tensors safetensors cannot store.
    """
    if any(np.asarray(array).dtype != np.float32 for array in tensors.values()):
        return [encode_tensors(tensors)]
    header, data, offset = {}, [], 0
    for name, array in sorted(tensors.items()):
        view = memoryview(np.ascontiguousarray(array, dtype="<f4").reshape(-1).view(np.uint8))
        header[name] = {"dtype": "F32", "shape": list(np.shape(array)), "data_offsets": [offset, offset + view.nbytes]}
        data.append(view)
        offset += view.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return [struct.pack("<Q", len(text)) + text, *data]


def weights_member(spec: AgentSpec) -> list[Any]:
    """Return the ``weights.safetensors`` member: ``layers.<i>.weight``/``.bias`` as views (`safetensors_parts`)."""
    weights: dict[str, Any] = {}
    for layer in spec.network.layers:
        weights[f"layers.{layer.index}.weight"] = layer.weight
        weights[f"layers.{layer.index}.bias"] = layer.bias
    return safetensors_parts(weights)


def build_members(spec: AgentSpec, lowered: Lowered) -> dict[str, Member]:
    """Return the bundle's members other than the manifest.

    Members: ``model.onnx`` and ``model.wasm`` (per target), ``weights.safetensors``,
    ``training_data.safetensors`` (when the agent has training data), ``agent.yaml`` (the header as
    written) and ``sections/<name>`` for each other section of the .af, passed through. A member is
    bytes or a list of buffers (`afcore.bundle.Member`) that views the spec's arrays.
    """
    members: dict[str, Member] = {
        "weights.safetensors": weights_member(spec),
        "agent.yaml": spec.header_text.encode("utf-8"),
    }
    if lowered.onnx is not None:
        members["model.onnx"] = lowered.onnx
    if lowered.wasm is not None:
        members["model.wasm"] = lowered.wasm.wasm
    if spec.training_data is not None:
        inputs, targets = spec.training_data
        members["training_data.safetensors"] = safetensors_parts({"inputs": inputs, "targets": targets})
    for name, payload in sorted(spec.extra_sections.items()):
        members[f"sections/{name}"] = bytes(payload)
    return members


def emit_bundle(spec: AgentSpec, lowered: Lowered, *, extra: Mapping[str, Any] | None = None) -> bytes:
    """Write the bundle of a lowered agent.

    Args:
        spec: the agent.
        lowered: the backends' results.
        extra: manifest keys to add (for tools; the compiler adds none).

    Returns:
        The .afb bytes (reproducible: see `afcore.bundle`).

    Raises:
        BundleError: AF4016 when a pass-through section has a name a bundle cannot hold.
    """
    manifest = build_manifest(spec, lowered)
    if extra:
        manifest = replace(manifest, extra={**manifest.extra, **extra})
    return write_bundle(manifest, build_members(spec, lowered), digests=lowered.digests)
