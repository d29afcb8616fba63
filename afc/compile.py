"""The compiler pipeline: .af file -> `AgentSpec` -> ONNX and WebAssembly -> bundle (.afb).

Each stage is one call on the previous stage's value (`afc.load_agent_file(...).spec()`,
`lower_onnx`, `lower_wasm`, `emit`); the IR is the only thing passed between them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Sequence

from afcore.errors import LoweringError, UsageError
from afcore.steps import learning_step

from .emit import TARGETS, Lowered, emit_bundle
from .reader import DEFAULT_MAX_SECTION_BYTES

if TYPE_CHECKING:
    from .spec import AgentSpec

__all__ = [
    "DEFAULT_TARGETS",
    "EMIT_FORMS",
    "CompileResult",
    "compile_agent",
    "compile_file",
    "compile_spec",
    "default_output",
    "emit_intermediate",
    "ensure_emit_form",
    "lower_agent",
    "parse_targets",
    "write_bundle_file",
]

#: the targets compiled when none are given
DEFAULT_TARGETS = ("onnx", "wasm")
#: the intermediate forms `emit_intermediate` gives (``af compile --emit``); ``bundle`` writes the bundle
EMIT_FORMS = ("spec", "onnx", "wat", "bundle")
#: the batch size the WebAssembly module is built for (the runtime's micro-batches stay within it)
WASM_MAX_BATCH = 64
#: networks with at least this many bytes of weights are lowered and hashed in threads (below it,
#: starting threads costs more than it saves)
THREADED_LOWERING_BYTES = 8 << 20
#: the bundle writer syncs the file to disk after each this many bytes (0: only at the end)
SYNC_BYTES = 64 << 20
#: bundles whose archive (uncompressed) is at least this big are written with O_DIRECT (`_DirectFile`)
DIRECT_IO_BYTES = 64 << 20
#: size of `_DirectFile`'s aligned buffer, and the alignment of its writes (covers 512 B and 4 KiB blocks)
_DIRECT_BUFFER, _DIRECT_ALIGN = 8 << 20, 4096


def parse_targets(targets: str | Iterable[str]) -> tuple[str, ...]:
    """Return the targets in canonical order from ``"onnx,wasm"`` or an iterable of names.

    Raises:
        UsageError: AF3004 for an unknown or empty target list.
    """
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [str(t) for t in targets]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or not names:
        raise UsageError(
            f"unknown target(s) {', '.join(repr(n) for n in unknown) or '(none given)'}",
            code="AF3004",
            hint="targets are `onnx` and `wasm`, comma-separated, e.g. `--target onnx,wasm`",
        )
    return tuple(t for t in TARGETS if t in names)


def lower_agent(spec: AgentSpec, *, targets: Sequence[str] = DEFAULT_TARGETS) -> Lowered:
    """Run the backends an agent is compiled for.

    Args:
        spec: the agent.
        targets: ``onnx`` and/or ``wasm``.

    Returns:
        The serialized, checked ONNX model and/or the WebAssembly module.

    Raises:
        LoweringError: AF30xx from the ONNX backend, AF31xx from the WebAssembly backend.
        UsageError: AF3004 for an unknown target.
    """
    targets = parse_targets(targets)
    if spec.network.weight_bytes < THREADED_LOWERING_BYTES:
        return _lower_serially(spec, targets)
    return _lower_in_threads(spec, targets)


def _lower_serially(spec: AgentSpec, targets: Sequence[str]) -> Lowered:
    onnx_bytes = wasm = None
    if "onnx" in targets:
        onnx_bytes = _lower_onnx(spec)
    if "wasm" in targets:
        wasm = _lower_wasm(spec)
    return _lowered(onnx_bytes, wasm)


def _lower_in_threads(spec: AgentSpec, targets: Sequence[str]) -> Lowered:
    """Lower both targets and hash the big members at once, on the cores the GIL leaves free.

    Hashing (hashlib), numpy's packing and wasmtime's assembling and validating release the GIL, so
    the WebAssembly backend and the digests of ``weights.safetensors``, ``model.onnx`` and
    ``model.wasm`` (for the manifest) run beside the ONNX backend (protobuf and the checker keep it).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .emit import weights_member

    digests: dict[str, Any] = {}
    onnx_bytes = wasm = None
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="af-lower") as pool:
        digests["weights.safetensors"] = pool.submit(_sha256, weights_member(spec))
        wasm_future = pool.submit(_lower_wasm, spec) if "wasm" in targets else None
        if "onnx" in targets:
            onnx_bytes = _lower_onnx(spec)
            digests["model.onnx"] = pool.submit(_sha256, [onnx_bytes])
        if wasm_future is not None:
            wasm = wasm_future.result()
            digests["model.wasm"] = pool.submit(_sha256, [wasm.wasm])
        known = {name: future.result() for name, future in digests.items()}
    return _lowered(onnx_bytes, wasm, known)


def _lower_onnx(spec: AgentSpec) -> bytes:
    from .lower_onnx import network_model_bytes

    execution = spec.workflows["execution"].steps if "execution" in spec.workflows else ()
    return network_model_bytes(spec.network, graph_name=spec.name,
                               weights_as_inputs=learning_step(execution) is not None)


def _lower_wasm(spec: AgentSpec) -> Any:
    from .lower_wasm import lower_network

    return lower_network(spec.network, max_batch=WASM_MAX_BATCH)


def _lowered(onnx_bytes: bytes | None, wasm: Any, digests: dict[str, str] | None = None) -> Lowered:
    if onnx_bytes is None:  # onnx (~145 ms to import) stays unloaded for `--target wasm`
        return Lowered(wasm=wasm, digests=digests or {})
    from .lower_onnx import IR_VERSION, OPSET

    return Lowered(onnx=onnx_bytes, opset=OPSET, ir_version=IR_VERSION, wasm=wasm, digests=digests or {})


def _sha256(chunks: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def compile_agent(spec: AgentSpec, *, targets: Sequence[str] = DEFAULT_TARGETS) -> bytes:
    """Compile an agent to bundle bytes.

    Args:
        spec: the agent (e.g. ``afc.load_agent_file(path).spec()``).
        targets: ``onnx`` and/or ``wasm``.

    Returns:
        The .afb bytes, identical for identical input.

    Raises:
        LoweringError: when a backend cannot lower the network.
        BundleError: AF4016 when a pass-through section name cannot be a bundle member.
        UsageError: AF3004 for an unknown target.
    """
    return emit_bundle(spec, lower_agent(spec, targets=targets))


def default_output(path: str | os.PathLike) -> Path:
    """Return where `compile_file` writes by default: ``agent.afb`` beside ``agent.af``."""
    return Path(path).with_suffix(".afb")


@dataclass(frozen=True)
class CompileResult:
    """A bundle written by `compile_spec`.

    Attributes:
        path: where it was written.
        size: its size in bytes.
        sha256: the sha256 (hex) of its bytes.
        spec: the agent compiled.
        targets: the targets compiled, in canonical order.
        member_sizes: member name -> size in bytes (``manifest.json`` excluded).
    """

    path: Path
    size: int
    sha256: str
    spec: AgentSpec
    targets: tuple[str, ...]
    member_sizes: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """Return the summary `af compile --json` prints: bundle, size, sha256, agent, targets, network, members."""
        from .emit import network_info

        network = network_info(self.spec.network).to_json()
        return {
            "bundle": str(self.path),
            "size": self.size,
            "sha256": self.sha256,
            "agent": {"name": self.spec.name, "version": str(self.spec.version)},
            "targets": list(self.targets),
            "parameters": network["parameters"],
            "layers": network["layers"],
            "members": [{"name": name, "size": self.member_sizes[name]} for name in sorted(self.member_sizes)],
        }


def compile_spec(
    spec: AgentSpec, *, output: str | os.PathLike, targets: Sequence[str] = DEFAULT_TARGETS
) -> CompileResult:
    """Lower an agent and write its bundle atomically.

    Args:
        spec: the agent (``afc.load_agent_file(path).spec()``).
        output: the bundle path; missing parent directories are created.
        targets: ``onnx`` and/or ``wasm``.

    Returns:
        The `CompileResult`.

    Raises:
        LoweringError: AF30xx/AF31xx from the backends; AF3006 when the bundle cannot be written.
        UsageError: AF3004 for an unknown target.
    """
    lowered = lower_agent(spec, targets=targets)
    size, digest, member_sizes = write_bundle_file(output, spec, lowered)
    compiled = tuple(t for t in TARGETS if getattr(lowered, t) is not None)
    return CompileResult(Path(output), size, digest, spec, compiled, member_sizes)


def compile_file(
    path: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    targets: Sequence[str] = DEFAULT_TARGETS,
    max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES,
) -> Path:
    """Compile an .af file and write its bundle atomically.

    Args:
        path: the .af file.
        output: the bundle path; default ``<path without .af>.afb`` beside the source.
        targets: ``onnx`` and/or ``wasm``.
        max_section_bytes: cap on any section's decompressed size.

    Returns:
        The path written.

    Raises:
        SourceError: the diagnostics `af validate` reports, for an invalid file.
        LoweringError: AF30xx/AF31xx from the backends; AF3006 when the bundle cannot be written.
        UsageError: AF0901 when the source cannot be read, AF3004 for an unknown target.
    """
    from . import load_agent_file

    spec = load_agent_file(path, max_section_bytes=max_section_bytes).spec()
    return compile_spec(spec, output=output if output is not None else default_output(path), targets=targets).path


def emit_intermediate(spec: AgentSpec, form: str) -> str:
    """Return an intermediate form of an agent as text (``af compile --emit``).

    Args:
        spec: the agent.
        form: ``spec`` (the manifest, JSON), ``onnx`` (the model as text) or ``wat`` (the module as text).

    Returns:
        The text.

    Raises:
        UsageError: AF3005 for another form.
    """
    import json

    if form == "spec":
        from .emit import Lowered, build_manifest

        return json.dumps(build_manifest(spec, Lowered()).to_json(), indent=2, sort_keys=True)
    if form == "onnx":
        from .lower_onnx import lower_network, model_text

        return model_text(lower_network(spec.network, graph_name=spec.name))
    ensure_emit_form(form)
    if form == "bundle":
        raise UsageError("`bundle` is written by compile_spec, not emitted as text", code="AF3005",
                         hint="use spec, onnx or wat")
    from .lower_wasm import lower_network as lower_wasm

    return lower_wasm(spec.network, max_batch=WASM_MAX_BATCH).wat


def ensure_emit_form(form: str) -> None:
    """Raise `UsageError` AF3005 unless ``form`` is one of `EMIT_FORMS`."""
    if form not in EMIT_FORMS:
        raise UsageError(f"unknown --emit form `{form}`", code="AF3005", hint=f"use one of {', '.join(EMIT_FORMS)}")


def write_bundle_file(
    destination: str | os.PathLike, spec: AgentSpec, lowered: Lowered
) -> tuple[int, str, dict[str, int]]:
    """Stream an agent's bundle into ``destination`` atomically (temporary file, fsync, rename).

    Args:
        destination: the .afb path; missing parent directories are created.
        spec: the agent.
        lowered: the backends' results (`lower_agent`).

    Returns:
        The bundle's size in bytes, its sha256 (hex), and each member's size.

    Raises:
        LoweringError: AF3006 when the file cannot be written; nothing is replaced then.
    """
    from afcore import fsutil
    from afcore.bundle import iter_bundle, member_size

    from .emit import build_manifest, build_members

    members = build_members(spec, lowered)
    chunks = iter_bundle(build_manifest(spec, lowered), members, digests=lowered.digests)
    direct = sum(member_size(data) for data in members.values()) >= DIRECT_IO_BYTES
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)  # `-o build/agent.afb` from a clean clone
        with fsutil.atomic_output(destination, mode=0o666 & ~_umask()) as temp:
            with _open_output(temp.fd, temp.path, direct=direct) as out:
                size, digest = _write_hashed(chunks, out, sync_bytes=0 if isinstance(out, _DirectFile) else SYNC_BYTES)
                out.flush()
    except OSError as exc:
        raise LoweringError(f"cannot write `{destination}`: {exc.strerror or exc}", code="AF3006",
                            hint="check that the path is a writable directory") from None
    return size, digest, {name: member_size(data) for name, data in members.items()}


def _open_output(fd: int, temp: Path, *, direct: bool) -> BinaryIO | _DirectFile:
    """A file writing to the temporary file ``fd`` (at ``temp``): buffered over a duplicate of ``fd``, or
    the file reopened with O_DIRECT when asked and the platform and file system allow it. Either is
    closed by its ``with`` block; ``fd`` stays open for `afcore.fsutil.atomic_output` to fsync and close."""
    flag = getattr(os, "O_DIRECT", 0)
    if direct and flag:
        try:
            return _DirectFile(os.open(temp, os.O_WRONLY | flag))
        except OSError:  # e.g. a file system without direct I/O
            pass
    return os.fdopen(os.dup(fd), "wb")


class _DirectFile:
    """A file written with O_DIRECT, from an aligned buffer straight to the disk, bypassing the page cache.

    Why: writing 550 MB through the page cache makes the kernel take 550 MB of fresh memory, which on
    this VM cost 0.1-1.1 s of system time from run to run, and the final fsync writes it all again;
    direct writes of the same bytes took a steady ~0.17 s. Writes are whole multiples of
    `_DIRECT_ALIGN` from a page-aligned buffer; `flush` pads the tail and cuts the file back to its size.
    If the file system refuses a direct write (EINVAL), the file goes on without O_DIRECT.
    """

    def __init__(self, fd: int) -> None:
        import mmap

        self.fd = fd
        self._buffer = mmap.mmap(-1, _DIRECT_BUFFER)  # page-aligned, as O_DIRECT needs
        self._view = memoryview(self._buffer)
        self._fill = self._size = 0

    def fileno(self) -> int:
        """Return the file descriptor."""
        return self.fd

    def write(self, data: bytes) -> int:
        """Buffer ``data``, writing out each full buffer; return ``len(data)``."""
        view, pos = memoryview(data), 0
        while pos < len(view):
            take = min(len(view) - pos, _DIRECT_BUFFER - self._fill)
            self._view[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill, pos = self._fill + take, pos + take
            if self._fill == _DIRECT_BUFFER:
                self._drain(_DIRECT_BUFFER)
        self._size += len(view)
        return len(view)

    def flush(self) -> None:
        """Write the last, partial buffer (padded with zeros) and truncate the file to the bytes written.

        Called once, after the last `write`.
        """
        if self._fill:
            padded = -(-self._fill // _DIRECT_ALIGN) * _DIRECT_ALIGN
            self._view[self._fill : padded] = bytes(padded - self._fill)
            self._drain(padded)
            os.ftruncate(self.fd, self._size)

    def _drain(self, length: int) -> None:
        done = 0
        while done < length:
            try:
                done += os.write(self.fd, self._view[done:length])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # refused as direct I/O: go on through the page cache (fails again if EINVAL meant else)
                import fcntl

                flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                if not flags & os.O_DIRECT:
                    raise
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        self._fill = 0

    def __enter__(self) -> _DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self._view.release()
        try:
            self._buffer.close()
        except BufferError:  # a slice still held by a traceback: the mapping goes when it does
            pass


def _write_hashed(chunks: Iterable[bytes], out: Any, *, sync_bytes: int = SYNC_BYTES) -> tuple[int, str]:
    """Write ``chunks`` to ``out`` in one thread and hash them in another, while this one drives zstd.

    Writing and hashing release the GIL, so they overlap the compression of the next chunks (and each
    other) instead of pausing zstd's workers: a 550 MB bundle takes ~0.4 s to hash and ~0.3 s to write.

    Returns:
        The bytes written and their sha256 (hex).

    Raises:
        OSError: from writing; the generator's own errors (BundleError) pass through unchanged.
    """
    digest, written = hashlib.sha256(), [0]
    failure: list[OSError] = []
    queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=16), queue.Queue(maxsize=16)]

    def hash_all() -> None:
        while (chunk := queues[0].get()) is not None:
            digest.update(chunk)

    def write_all() -> None:
        synced = 0
        while (chunk := queues[1].get()) is not None:
            if failure:
                continue
            try:
                written[0] += out.write(chunk)
                if sync_bytes and written[0] - synced >= sync_bytes:
                    # flushed to disk as we go, so the caller's final fsync has little left to wait for
                    out.flush()
                    os.fdatasync(out.fileno())
                    synced = written[0]
            except OSError as exc:
                failure.append(exc)

    threads = [threading.Thread(target=work, name=f"af-bundle-{work.__name__}", daemon=True)
               for work in (hash_all, write_all)]
    for thread in threads:
        thread.start()
    try:
        for chunk in chunks:
            if failure:
                break
            for pending in queues:
                pending.put(chunk)
    finally:
        for pending in queues:
            pending.put(None)
        for thread in threads:
            thread.join()
    if failure:
        raise failure[0]
    return written[0], digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
