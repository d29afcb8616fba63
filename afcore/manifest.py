"""`Manifest`: the typed ``manifest.json`` of a bundle, parsed and checked in one place.

The compiler's emitter builds a `Manifest` and writes `Manifest.to_json`; `afcore.bundle.read_bundle`
checks the container part (`check_format`, `parse_members`) before it inflates any member; the
runtime's loader and `af inspect` call `Manifest.from_json` for the rest. Prose: docs/bundle.md;
schema: ``schemas/afb-manifest-1.0.schema.json``.

A field the format requires and that is missing or of the wrong type is refused with one code,
AF4018, naming the field (``network.layers[1]``); informational fields the runtime does not use
(``agent.description``, ``source.created``, ``network.learning_rate``...) may be absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .errors import BundleError
from .steps import Step

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "TARGETS",
    "WORKFLOW_NAMES",
    "AgentInfo",
    "LayerInfo",
    "Manifest",
    "MemberEntry",
    "NetworkInfo",
    "OnnxInfo",
    "SourceInfo",
    "TensorInfo",
    "WasmInfo",
    "check_format",
    "parse_members",
    "target_keeper",
]

#: the bundle format the compiler writes
FORMAT_VERSION = "1.0"
#: the bundle format versions this af reads
SUPPORTED_FORMAT_VERSIONS = ("1.0",)
#: the targets a bundle can carry, in manifest order
TARGETS = ("onnx", "wasm")
#: the workflows a manifest may declare, in the order they run
WORKFLOW_NAMES = ("initialization", "execution", "shutdown")
#: the keys `Manifest` reads; any others are kept in `Manifest.extra`
_KNOWN_KEYS = frozenset({"format", "format_version", "agent", "compiler", "source", "network", "targets",
                         "resources", "workflows", "onnx", "wasm", "members"})
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
#: an agent's name, as the .af schema allows it (it names the agent's directory under --state-dir)
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _malformed(path: str, want: str) -> BundleError:
    return BundleError(
        f"manifest.json: `{path}` is missing or is not {want}",
        code="AF4018",
        hint="the bundle was written by another af or altered; recompile it with `af compile`",
    )


def _get(data: Any, path: str, kind: type | tuple[type, ...], want: str, *, default: Any = ...) -> Any:
    """Return ``data[a][b]`` for ``path`` ``"a.b"``, checked to be a ``kind`` (bool is never an int)."""
    value = data
    for part in path.split("."):
        value = value.get(part, ...) if isinstance(value, dict) else ...
    if value is ... and default is not ...:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))):
        raise _malformed(path, want)
    return value


def _int(value: Any, path: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _malformed(path, f"an integer of at least {minimum}")
    return value


def check_format(data: Any) -> None:
    """Check that ``data`` is a manifest of a format version this af reads.

    Raises:
        BundleError: AF4009 when it is not a JSON object; AF4010 for another ``format`` or an
            unsupported ``format_version`` (the hint names the supported ones).
    """
    if not isinstance(data, dict):
        raise BundleError("manifest.json is not a JSON object", code="AF4009")
    if data.get("format") != "afb":
        raise BundleError("manifest.json does not describe an af bundle (`format` is not \"afb\")", code="AF4010")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"unsupported bundle format version {version!r}",
            code="AF4010",
            hint=f"this af reads format versions {', '.join(SUPPORTED_FORMAT_VERSIONS)}; "
            "recompile the .af with this af or use a matching af",
        )


@dataclass(frozen=True)
class MemberEntry:
    """One entry of ``members``: a member's name, size in bytes and sha256 (lower-case hex)."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """Return the manifest form of the entry."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def parse_members(data: Mapping[str, Any]) -> tuple[MemberEntry, ...]:
    """Return the ``members`` list of a manifest, each name once.

    Raises:
        BundleError: AF4014 when the list is missing, or an entry is malformed or repeated.
    """
    entries = data.get("members")
    if not isinstance(entries, list):
        raise BundleError("manifest.json has no `members` list", code="AF4014")
    seen: set[str] = set()
    members = []
    for entry in entries:
        ok = isinstance(entry, dict) and isinstance(entry.get("name"), str)
        ok = ok and isinstance(entry.get("size"), int) and not isinstance(entry.get("size"), bool)
        ok = ok and entry["size"] >= 0 and isinstance(entry.get("sha256"), str) and _SHA256_RE.fullmatch(entry["sha256"])
        if not ok or entry["name"] in seen:
            shown = repr(entry) if len(repr(entry)) <= 200 else repr(entry)[:200] + "..."
            raise BundleError(f"manifest.json has a malformed or repeated member entry {shown}", code="AF4014")
        seen.add(entry["name"])
        members.append(MemberEntry(entry["name"], entry["size"], entry["sha256"].lower()))
    return tuple(members)


@dataclass(frozen=True)
class AgentInfo:
    """``agent``: the agent's name and version, and its optional description and author."""

    name: str
    version: str
    description: str | None = None
    author: str | None = None


@dataclass(frozen=True)
class SourceInfo:
    """``source``: the compiled .af file's basename, sha256 and its own timestamps (any may be None)."""

    file: str | None = None
    sha256: str | None = None
    created: str | None = None
    modified: str | None = None


@dataclass(frozen=True)
class TensorInfo:
    """``network.input``/``network.output``: a float32 tensor ``[batch, width]``."""

    name: str
    width: int
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        """Return the manifest form (``shape`` is ``[null, width]``)."""
        return {"name": self.name, "dtype": self.dtype, "shape": [None, self.width]}


@dataclass(frozen=True)
class LayerInfo:
    """One entry of ``network.layers``: a dense layer ``in -> out``."""

    index: int
    in_size: int
    out_size: int
    activation: str
    parameters: int

    def to_json(self) -> dict[str, Any]:
        """Return the manifest form (keys ``in`` and ``out``)."""
        return {"index": self.index, "in": self.in_size, "out": self.out_size, "activation": self.activation,
                "parameters": self.parameters}


@dataclass(frozen=True)
class NetworkInfo:
    """``network``: the signature and the layers of the agent's network."""

    input: TensorInfo
    output: TensorInfo
    layers: tuple[LayerInfo, ...]
    hidden_activation: str
    output_activation: str
    parameters: int
    learning_rate: float | None = None
    #: the class of each output (two for one sigmoid output), from ``neural_config.labels``; None without
    labels: tuple[str | int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the manifest form (``labels`` only when there are labels, so older manifests are unchanged)."""
        data = {
            "input": self.input.to_json(),
            "output": self.output.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
            "hidden_activation": self.hidden_activation,
            "output_activation": self.output_activation,
            "parameters": self.parameters,
            "learning_rate": self.learning_rate,
        }
        if self.labels is not None:
            data["labels"] = list(self.labels)
        return data


@dataclass(frozen=True)
class OnnxInfo:
    """``onnx``: the ONNX target's member, opset and IR version."""

    member: str
    opset: int
    ir_version: int


@dataclass(frozen=True)
class WasmInfo:
    """``wasm``: the WebAssembly target's member, ABI version, batch size and initial memory pages."""

    member: str
    abi: int
    max_batch: int
    memory_pages: int


@dataclass(frozen=True)
class Manifest:
    """A bundle's ``manifest.json``, typed.

    Attributes:
        agent: ``agent``.
        compiler: ``compiler`` (name, version).
        source: ``source``.
        network: ``network``.
        targets: the compiled backends, in `TARGETS` order.
        limits: ``resources.limits`` (name -> number).
        requirements: ``resources.requirements`` (name -> number).
        workflows: workflow name -> parsed steps, for each of `WORKFLOW_NAMES`.
        onnx: ``onnx``, or None.
        wasm: ``wasm``, or None.
        members: ``members``, or None before `afcore.bundle.write_bundle` adds them.
        format_version: ``format_version``.
        extra: top-level keys this af does not read, kept as given.
    """

    agent: AgentInfo
    compiler: tuple[str, str]
    source: SourceInfo
    network: NetworkInfo
    targets: tuple[str, ...]
    limits: Mapping[str, float] = field(default_factory=dict)
    requirements: Mapping[str, float] = field(default_factory=dict)
    workflows: Mapping[str, tuple[Step, ...]] = field(default_factory=dict)
    onnx: OnnxInfo | None = None
    wasm: WasmInfo | None = None
    members: tuple[MemberEntry, ...] | None = None
    format_version: str = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse and check a manifest read from a bundle.

        Args:
            data: the decoded ``manifest.json``.

        Returns:
            The `Manifest`.

        Raises:
            BundleError: AF4009/AF4010 (`check_format`), AF4014 (`parse_members`), AF4018 naming
                the first required field that is missing or malformed.
        """
        check_format(data)
        name = _get(data, "agent.name", str, "a string")
        if not AGENT_NAME.fullmatch(name):
            # the name becomes a directory under --state-dir: `../x` must not escape it
            raise _malformed("agent.name", "a name of letters, digits, `.`, `_` and `-` (the .af schema's)")
        agent = AgentInfo(
            name=name,
            version=str(_get(data, "agent.version", (str, int, float), "a version")),
            description=_get(data, "agent.description", (str, type(None)), "a string", default=None),
            author=_get(data, "agent.author", (str, type(None)), "a string", default=None),
        )
        compiler = (_get(data, "compiler.name", str, "a string", default=""),
                    _get(data, "compiler.version", str, "a string", default=""))
        source = SourceInfo(*(_get(data, f"source.{key}", (str, type(None)), "a string", default=None)
                              for key in ("file", "sha256", "created", "modified")))
        return cls(
            agent=agent,
            compiler=compiler,
            source=source,
            network=_parse_network(data),
            targets=_parse_targets(data),
            limits=_parse_numbers(data, "resources.limits"),
            requirements=_parse_numbers(data, "resources.requirements"),
            workflows=_parse_workflows(data),
            onnx=_parse_onnx(data),
            wasm=_parse_wasm(data),
            members=parse_members(data),
            format_version=data["format_version"],
            extra={key: value for key, value in data.items() if key not in _KNOWN_KEYS},
        )

    def to_json(self) -> dict[str, Any]:
        """Return the manifest as JSON-compatible data (``members`` only when known).

        `afcore.bundle.encode_manifest` turns it into the canonical bytes.
        """
        data: dict[str, Any] = {
            **self.extra,
            "format": "afb",
            "format_version": self.format_version,
            "agent": {"name": self.agent.name, "version": self.agent.version, "description": self.agent.description,
                      "author": self.agent.author},
            "compiler": {"name": self.compiler[0], "version": self.compiler[1]},
            "source": {"file": self.source.file, "sha256": self.source.sha256, "created": self.source.created,
                       "modified": self.source.modified},
            "network": self.network.to_json(),
            "targets": list(self.targets),
            "resources": {"limits": dict(self.limits), "requirements": dict(self.requirements)},
            "workflows": {name: [step.to_json() for step in self.workflows.get(name, ())] for name in WORKFLOW_NAMES},
        }
        if self.onnx is not None:
            data["onnx"] = {"member": self.onnx.member, "opset": self.onnx.opset, "ir_version": self.onnx.ir_version}
        if self.wasm is not None:
            data["wasm"] = {"member": self.wasm.member, "abi": self.wasm.abi, "max_batch": self.wasm.max_batch,
                            "memory_pages": self.wasm.memory_pages}
        if self.members is not None:
            data["members"] = [entry.to_json() for entry in self.members]
        return data

    def target_member(self, target: str) -> str | None:
        """Return the member name of a compiled target, or None when the bundle lacks it."""
        info = self.onnx if target == "onnx" else self.wasm if target == "wasm" else None
        return info.member if info is not None and target in self.targets else None


def target_keeper(backends: Sequence[str]) -> Callable[[Any], set[str]]:
    """Return a ``keep`` for `afcore.bundle.read_bundle`: the model of the first of ``backends`` the bundle has.

    Args:
        backends: the backends in order of preference (one when the user chose).

    Returns:
        A function of the manifest's JSON data returning the member names to keep (none when the
        bundle has none of the backends: loading it then says so).

    Raises:
        BundleError: AF4018 (when the function is called) for a malformed manifest.
    """

    def keep(data: Any) -> set[str]:
        manifest = Manifest.from_json(data)
        chosen = next((b for b in backends if b in manifest.targets), None)
        member = manifest.target_member(chosen) if chosen is not None else None
        return {member} if member is not None else set()

    return keep


def _parse_tensor(data: Any, side: str) -> TensorInfo:
    path = f"network.{side}"
    if _get(data, f"{path}.dtype", str, '"float32"') != "float32":
        raise _malformed(f"{path}.dtype", '"float32"')
    shape = _get(data, f"{path}.shape", list, "a list [null, width]")
    if len(shape) != 2 or shape[0] is not None or not isinstance(shape[1], int) or isinstance(shape[1], bool) or shape[1] < 1:
        raise _malformed(f"{path}.shape", "a list [null, width]")
    return TensorInfo(_get(data, f"{path}.name", str, "a string"), shape[1])


def _parse_layer(layer: Any, index: int) -> LayerInfo:
    path = f"network.layers[{index}]"
    if not isinstance(layer, dict):
        raise _malformed(path, "a layer with positive `in` and `out`")
    sizes = (layer.get("in"), layer.get("out"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise _malformed(path, "a layer with positive `in` and `out`")
    n_in, n_out = sizes
    activation = layer.get("activation", "")
    if not isinstance(activation, str):
        raise _malformed(f"{path}.activation", "a string")
    return LayerInfo(
        index=_int(layer.get("index", index), f"{path}.index"),
        in_size=n_in,
        out_size=n_out,
        activation=activation,
        parameters=_int(layer.get("parameters", n_in * n_out + n_out), f"{path}.parameters"),
    )


def _parse_network(data: Any) -> NetworkInfo:
    layers = tuple(_parse_layer(layer, k) for k, layer in enumerate(_get(data, "network.layers", list, "a list of layers")))
    rate = _get(data, "network.learning_rate", (int, float, type(None)), "a number", default=None)
    return NetworkInfo(
        input=_parse_tensor(data, "input"),
        output=_parse_tensor(data, "output"),
        layers=layers,
        hidden_activation=_get(data, "network.hidden_activation", str, "a string", default=""),
        output_activation=_get(data, "network.output_activation", str, "a string", default=""),
        parameters=_int(_get(data, "network.parameters", int, "an integer", default=sum(l.parameters for l in layers)),
                        "network.parameters"),
        learning_rate=rate,
        labels=_parse_labels(data),
    )


def _parse_labels(data: Any) -> tuple[str | int, ...] | None:
    labels = _get(data, "network.labels", (list, type(None)), "a list of strings or integers", default=None)
    if labels is None:
        return None
    if not all(isinstance(label, (str, int)) and not isinstance(label, bool) for label in labels):
        raise _malformed("network.labels", "a list of strings or integers")
    return tuple(labels)


def _parse_targets(data: Any) -> tuple[str, ...]:
    targets = _get(data, "targets", list, "a list of targets")
    if any(t not in TARGETS for t in targets) or len(set(targets)) != len(targets):
        raise _malformed("targets", f"a list of distinct targets among {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in targets)


def _parse_numbers(data: Any, path: str) -> dict[str, float]:
    numbers = _get(data, path, dict, "an object of numbers", default={})
    for key, value in numbers.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _malformed(f"{path}.{key}", "a number")
    return dict(numbers)


def _parse_workflows(data: Any) -> dict[str, tuple[Step, ...]]:
    declared = _get(data, "workflows", dict, "an object", default={})
    result: dict[str, tuple[Step, ...]] = {}
    for name in WORKFLOW_NAMES:
        steps = declared.get(name) or []
        if not isinstance(steps, list):
            raise _malformed(f"workflows.{name}", "a list of steps")
        try:
            result[name] = tuple(Step.from_json(step) for step in steps)
        except (ValueError, AttributeError, TypeError) as exc:
            raise BundleError(f"manifest.json: `workflows.{name}` has a malformed step: {exc}", code="AF4018",
                              hint="recompile the bundle with `af compile`") from None
    return result


def _parse_onnx(data: Any) -> OnnxInfo | None:
    if "onnx" not in data:
        return None
    return OnnxInfo(_get(data, "onnx.member", str, "a string"), _get(data, "onnx.opset", int, "an integer"),
                    _get(data, "onnx.ir_version", int, "an integer"))


def _parse_wasm(data: Any) -> WasmInfo | None:
    if "wasm" not in data:
        return None
    return WasmInfo(
        member=_get(data, "wasm.member", str, "a string"),
        abi=_get(data, "wasm.abi", int, "an integer"),
        max_batch=_int(_get(data, "wasm.max_batch", int, "an integer"), "wasm.max_batch", minimum=1),
        memory_pages=_int(_get(data, "wasm.memory_pages", int, "an integer"), "wasm.memory_pages"),
    )
