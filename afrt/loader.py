"""Bundle -> `LoadedBundle`: the checked, typed view of a bundle that the backends start from.

`afcore.bundle.read_bundle` has already verified the container (format version, every member's
size and sha256, safe member names). This module reads what the runtime needs out of the
manifest, checks it is present and well-typed, and rebuilds the workflows' step trees. It does
not look inside the models: each backend checks the member it runs (`afrt.inference`,
`afrt.sandbox`), so that a wasm-only run never imports onnx.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from afcore.errors import BundleError, UsageError
from afcore.steps import Step

__all__ = ["WORKFLOW_NAMES", "LoadedBundle", "load_bundle"]

#: the workflows a manifest may declare, in the order they run
WORKFLOW_NAMES = ("initialization", "execution", "shutdown")
#: the bundle format versions this runtime understands
SUPPORTED_FORMAT_VERSIONS = ("1.0",)


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle with the manifest fields the runtime uses pulled out and typed.

    Attributes:
        manifest: the whole manifest, as read.
        members: member name -> bytes.
        digest: sha256 (hex) of the .afb bytes (or whatever digest the given `Bundle` carried).
        name: ``agent.name``.
        version: ``agent.version``.
        input_name: ``network.input.name``.
        output_name: ``network.output.name``.
        input_size: width of an input record.
        output_size: width of an output record.
        layers: (in, out) of each dense layer.
        targets: the compiled backends (``"onnx"``, ``"wasm"``).
        resources: ``resources`` (``limits``, ``requirements``), possibly empty.
        workflows: workflow name -> its parsed steps.
    """

    manifest: Mapping[str, Any]
    members: Mapping[str, bytes]
    digest: str
    name: str
    version: str
    input_name: str
    output_name: str
    input_size: int
    output_size: int
    layers: tuple[tuple[int, int], ...]
    targets: tuple[str, ...]
    resources: Mapping[str, Any] = field(default_factory=dict)
    workflows: Mapping[str, tuple[Step, ...]] = field(default_factory=dict)

    def limit(self, name: str) -> float | None:
        """Return ``resources.limits.<name>`` or None when it is not declared."""
        value = (self.resources.get("limits") or {}).get(name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def wasm_abi(self) -> Any:
        """Return ``wasm.abi`` of the manifest (None when absent)."""
        entry = self.manifest.get("wasm")
        return entry.get("abi") if isinstance(entry, dict) else None

    def member(self, target: str) -> bytes:
        """Return the bytes of a backend's member (``manifest[target].member``).

        Raises:
            BundleError: AF5044 when the bundle was not compiled for ``target``.
        """
        entry = self.manifest.get(target)
        name = entry.get("member") if isinstance(entry, dict) else None
        if target not in self.targets or not isinstance(name, str) or name not in self.members:
            raise BundleError(
                f"the bundle has no `{target}` model (targets: {', '.join(self.targets) or 'none'})",
                code="AF5044",
                hint=f"use a backend in the bundle's targets, or recompile with `af compile --target {target}`",
            )
        return self.members[name]


def _bad(path: str, want: str) -> BundleError:
    return BundleError(
        f"manifest.json: `{path}` is missing or is not {want}",
        code="AF5041",
        hint="the bundle was written by another af or altered; recompile it with `af compile`",
    )


def _get(data: Any, path: str, kind: type | tuple[type, ...], want: str) -> Any:
    value = data
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _bad(path, want)
    return value


def _width(manifest: Mapping[str, Any], side: str) -> int:
    if _get(manifest, f"network.{side}.dtype", str, '"float32"') != "float32":
        raise _bad(f"network.{side}.dtype", '"float32"')
    shape = _get(manifest, f"network.{side}.shape", list, "a list [null, width]")
    if len(shape) != 2 or not isinstance(shape[1], int) or isinstance(shape[1], bool) or shape[1] < 1:
        raise _bad(f"network.{side}.shape", "a list [null, width]")
    return shape[1]


def _layers(manifest: Mapping[str, Any]) -> tuple[tuple[int, int], ...]:
    layers = _get(manifest, "network.layers", list, "a list of layers")
    out = []
    for index, layer in enumerate(layers):
        pair = (layer.get("in"), layer.get("out")) if isinstance(layer, dict) else (None, None)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
            raise _bad(f"network.layers[{index}]", "a layer with positive `in` and `out`")
        out.append(pair)
    return tuple(out)


def _workflows(manifest: Mapping[str, Any]) -> dict[str, tuple[Step, ...]]:
    declared = manifest.get("workflows") or {}
    if not isinstance(declared, dict):
        raise _bad("workflows", "an object")
    result: dict[str, tuple[Step, ...]] = {}
    for name in WORKFLOW_NAMES:
        steps = declared.get(name) or []
        if not isinstance(steps, list):
            raise _bad(f"workflows.{name}", "a list of steps")
        try:
            result[name] = tuple(Step.from_json(step) for step in steps)
        except (ValueError, AttributeError, TypeError) as exc:
            raise BundleError(f"manifest.json: `workflows.{name}` has a malformed step: {exc}", code="AF5041",
                              hint="recompile the bundle with `af compile`") from None
    return result


def _from_bundle(bundle: Any) -> LoadedBundle:
    manifest = bundle.manifest
    if manifest.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"unsupported bundle format version {manifest.get('format_version')!r}",
            code="AF5040",
            hint=f"this runtime runs format versions {', '.join(SUPPORTED_FORMAT_VERSIONS)}; recompile the bundle",
        )
    targets = _get(manifest, "targets", list, "a list of targets")
    return LoadedBundle(
        manifest=manifest,
        members=bundle.members,
        digest=bundle.digest,
        name=_get(manifest, "agent.name", str, "a string"),
        version=str(_get(manifest, "agent.version", (str, int, float), "a version")),
        input_name=_get(manifest, "network.input.name", str, "a string"),
        output_name=_get(manifest, "network.output.name", str, "a string"),
        input_size=_width(manifest, "input"),
        output_size=_width(manifest, "output"),
        layers=_layers(manifest),
        targets=tuple(t for t in targets if isinstance(t, str)),
        resources=manifest.get("resources") if isinstance(manifest.get("resources"), dict) else {},
        workflows=_workflows(manifest),
    )


def load_bundle(source: str | os.PathLike | bytes | Any, *, max_total_bytes: int | None = None) -> LoadedBundle:
    """Read, verify and index a bundle.

    Args:
        source: a path to an .afb, its bytes, or an `afcore.bundle.Bundle` already read.
        max_total_bytes: cap on the decompressed size (`afcore.bundle.MAX_TOTAL_BYTES` when None).

    Returns:
        The `LoadedBundle`.

    Raises:
        BundleError: AF4xxx from `afcore.bundle.read_bundle` for a corrupt or unsafe container;
            AF5040 for an unsupported format version; AF5041 for a manifest field the runtime
            needs that is missing or malformed.
        UsageError: AF5090 when ``source`` is none of these.
    """
    from afcore.bundle import MAX_TOTAL_BYTES, read_bundle

    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        limit = MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes
        source = read_bundle(source, max_total_bytes=limit)
    if not all(hasattr(source, attr) for attr in ("manifest", "members", "digest")):
        raise UsageError(f"cannot load a bundle from a {type(source).__name__}", code="AF5090",
                         hint="pass a path, the .afb bytes or an afcore.bundle.Bundle")
    return _from_bundle(source)
