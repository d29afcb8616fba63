"""Bundle -> `LoadedBundle`: the checked, typed view of a bundle that the backends start from.

`afcore.bundle.read_bundle` has already verified the container (format version, every member's
size and sha256, safe member names). With ``trust`` (the signers' public keys), the bundle's
signature is verified first, before its manifest is parsed (`afcore.signing.read_signed_bundle`):
an unsigned, untrusted, forged or altered bundle is refused before af reads anything it says. This module types the manifest (`afcore.manifest.Manifest`,
the one parser the compiler's emitter and `af inspect` use too) and keeps what the runtime needs
at hand. It does
not look inside the models: each backend checks the member it runs (`afrt.inference`,
`afrt.sandbox`), so that a wasm-only run never imports onnx.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from afcore.errors import BundleError, UsageError
from afcore.manifest import WORKFLOW_NAMES, Manifest
from afcore.steps import Step

__all__ = ["WORKFLOW_NAMES", "LoadedBundle", "ensure_trusted", "load_bundle"]


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle with the manifest fields the runtime uses pulled out and typed.

    Attributes:
        manifest: the whole manifest, as read.
        members: member name -> bytes (or `afcore.bundle.MemberFile`, read with ``spill_over``).
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
        info: the typed manifest.
        signature: the verified `afcore.signing.Signature` when the bundle was loaded with ``trust``.
    """

    manifest: Mapping[str, Any]
    members: Mapping[str, Any]
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
    info: Manifest | None = None
    signature: Any = None

    def limit(self, name: str) -> float | None:
        """Return ``resources.limits.<name>`` or None when it is not declared."""
        value = (self.resources.get("limits") or {}).get(name)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def wasm_abi(self) -> Any:
        """Return ``wasm.abi`` of the manifest (None when absent)."""
        return self.info.wasm.abi if self.info is not None and self.info.wasm is not None else None

    def member(self, target: str) -> Any:
        """Return the bytes of a backend's member (``manifest[target].member``), or its
        `afcore.bundle.MemberFile` when it was read to a file.

        Raises:
            BundleError: AF5044 when the bundle was not compiled for ``target``.
        """
        name = self.info.target_member(target) if self.info is not None else None
        if name is None or name not in self.members:
            raise BundleError(
                f"the bundle has no `{target}` model (targets: {', '.join(self.targets) or 'none'})",
                code="AF5044",
                hint=f"use a backend in the bundle's targets, or recompile with `af compile --target {target}`",
            )
        return self.members[name]


def _from_bundle(bundle: Any, signature: Any = None) -> LoadedBundle:
    info = Manifest.from_json(bundle.manifest)
    network = info.network
    return LoadedBundle(
        manifest=bundle.manifest,
        members=bundle.members,
        digest=bundle.digest,
        name=info.agent.name,
        version=info.agent.version,
        input_name=network.input.name,
        output_name=network.output.name,
        input_size=network.input.width,
        output_size=network.output.width,
        layers=tuple((layer.in_size, layer.out_size) for layer in network.layers),
        targets=info.targets,
        resources={"limits": dict(info.limits), "requirements": dict(info.requirements)},
        workflows=info.workflows,
        info=info,
        signature=signature,
    )


def load_bundle(source: str | os.PathLike | bytes | Any, *, max_total_bytes: int | None = None,
                trust: Sequence[Any] | None = None, keep: Any = None, spill_over: int | None = None) -> LoadedBundle:
    """Read, verify and index a bundle.

    Args:
        source: a path to an .afb, its bytes, or an `afcore.bundle.Bundle` already read.
        max_total_bytes: cap on the decompressed size (`afcore.bundle.MAX_TOTAL_BYTES` when None).
        trust: `afcore.signing.PublicKey` s (or `cryptography` Ed25519 public keys); when given, the bundle must carry a signature by one
            of them over its manifest, checked before the manifest is parsed (a `Bundle` already
            read is checked too: its signature, then each member's sha256).
        keep: when reading a path or bytes, the members to keep (`afcore.bundle.read_bundle`).
        spill_over: when reading a path or bytes, members kept bigger than this go to temporary
            files (`afcore.bundle.MemberFile`; `afcore.bundle.read_bundle`).

    Returns:
        The `LoadedBundle`.

    Raises:
        BundleError: AF4xxx from `afcore.bundle.read_bundle` for a corrupt or unsafe container;
            AF4010 for an unsupported format version; AF4018 for a manifest field that is
            missing or malformed (`afcore.manifest.Manifest.from_json`); with ``trust``,
            AF4050-AF4055 (`afcore.signing`): unsigned, untrusted key, bad signature, another
            manifest, malformed signature, a member not as signed.
        UsageError: AF5090 when ``source`` is none of these; AF0963 for an empty ``trust``.
    """
    from afcore.bundle import MAX_TOTAL_BYTES, Bundle, read_bundle

    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        limit = MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes
        if trust is not None:
            from afcore.signing import read_signed_bundle

            source = read_signed_bundle(source, trust, max_total_bytes=limit, keep=keep, spill_over=spill_over)
        else:
            source = read_bundle(source, max_total_bytes=limit, keep=keep, spill_over=spill_over)
    if not all(hasattr(source, attr) for attr in ("manifest", "members", "digest")):
        raise UsageError(f"cannot load a bundle from a {type(source).__name__}", code="AF5090",
                         hint="pass a path, the .afb bytes or an afcore.bundle.Bundle")
    signature = None
    if trust is not None:
        from afcore.signing import verify_loaded_bundle

        if not isinstance(source, Bundle):
            raise BundleError("the bundle is not signed (it was not read from a file)", code="AF4050",
                              hint="pass the path or bytes of a signed bundle")
        signature = verify_loaded_bundle(source, trust)
    return _from_bundle(source, signature)


def ensure_trusted(loaded: LoadedBundle, trust: Sequence[Any]) -> None:
    """Check that a `LoadedBundle` was loaded with a signature by one of the ``trust`` keys.

    Raises:
        BundleError: AF4050 when it was loaded without a verified signature; AF4051 when the
            key that verified it is not among ``trust``.
    """
    from afcore.signing import trusted_keys

    keys = trusted_keys(trust)
    if loaded.signature is None:
        raise BundleError("the bundle was loaded without a verified signature", code="AF4050",
                          hint="load it with afrt.load_bundle(..., trust=keys)")
    if loaded.signature.key not in keys:
        raise BundleError(f"the bundle is signed by key {loaded.signature.key_id}, which is not trusted",
                          code="AF4051", hint="pass the signer's public key in trust=")
