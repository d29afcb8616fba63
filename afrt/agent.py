"""`afrt.load(bundle) -> Agent`: a loaded agent with one sandboxed backend, and its replicas.

An `Agent` is what the swarm runs: the bundle's identity, resources and workflows, plus
``infer`` on the backend chosen at load time. ``infer`` is the hot path (benchmarks 2 and 3
measure what it adds over the bare backend call), so it checks the input with a few attribute
reads and hands C-contiguous float32 arrays to the backend without copying.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from afcore.bundle import LARGE_MEMBER_BYTES
from afcore.errors import BundleError, InferenceError, UsageError
from afcore.manifest import target_keeper
from afcore.steps import learning_step

from .loader import LoadedBundle, ensure_trusted, load_bundle
from .weights import WeightStore, ensure_layers

if TYPE_CHECKING:
    from types import TracebackType

    from afcore.steps import Step

__all__ = ["BACKENDS", "DEFAULT_MEMORY_MB", "ONNX_MAX_BATCH", "Agent", "Backend", "load"]

#: the backends `load` accepts
BACKENDS = ("onnx", "wasm")
#: records per onnxruntime call; `Agent.infer` splits larger arrays to bound peak memory
ONNX_MAX_BATCH = 4096
#: the wasm memory cap when the manifest declares no ``resources.limits.memory_mb``
DEFAULT_MEMORY_MB = 512
_F32 = np.dtype(np.float32)


class Backend(Protocol):
    """What `Agent` needs of a backend (`afrt.inference.OnnxModel`, `afrt.sandbox.WasmBackend`)."""

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run ``1 <= n <= max_batch`` C-contiguous float32 records."""

    def replica(self) -> Backend:
        """Return a backend for another replica, sharing compiled code."""

    def read_weights(self, shapes: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the weights it was loaded with (new float32 arrays, (weight [out, in], bias [out]) per layer)."""

    def set_weights(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Use checked weights from the next call on, for every replica."""

    def read_normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the input normalisation (mean, scale) the model applies, or None."""

    def close(self) -> None:
        """Release what this replica holds."""


class Agent:
    """A loaded agent: identity, resources, workflows, and inference on one backend.

    Create it with `load`; make more instances sharing the compiled code with `replica`. Calls
    from several threads are safe (the ONNX session is thread-safe; each wasm call takes an
    instance of its own), but give each worker its own replica so that `fuel_used` is its own.
    `weights` and `set_weights` read and replace the weights of the agent and all its replicas
    (online and federated learning; replace them between calls, not during one).

    Attributes:
        manifest: the bundle's manifest.
        name: the agent's name.
        version: the agent's version.
        digest: sha256 of the bundle.
        backend: ``"onnx"`` or ``"wasm"``.
        input_size: floats per input record.
        output_size: floats per output record.
        max_batch: the largest batch one backend call takes; `infer` splits larger inputs.
        workflows: ``initialization``/``execution``/``shutdown`` -> parsed steps.
        resources: the manifest's ``resources`` (``limits``, ``requirements``).
        bundle: the `LoadedBundle`.
    """

    def __init__(self, bundle: LoadedBundle, engine: Backend, *, backend: str,
                 weights: WeightStore | None = None) -> None:
        self.bundle = bundle
        self.manifest: Mapping[str, Any] = bundle.manifest
        self.name, self.version, self.digest = bundle.name, bundle.version, bundle.digest
        self.backend = backend
        self.input_size, self.output_size = bundle.input_size, bundle.output_size
        self.workflows: Mapping[str, tuple[Step, ...]] = bundle.workflows
        self.resources: Mapping[str, Any] = bundle.resources
        self.max_batch: int = getattr(engine, "max_batch", ONNX_MAX_BATCH)
        self._engine: Backend | None = engine
        self._run: Callable[[np.ndarray], np.ndarray] = engine.run
        #: what loading adjusted and the user should hear of (e.g. inference threads capped at the CPUs)
        self.notices: list[str] = list(getattr(engine, "notices", ()))
        #: the current weights, shared with the replicas (read from the backend when first asked)
        self._weights = weights if weights is not None else WeightStore(
            lambda: engine.read_weights(bundle.layers))

    def __repr__(self) -> str:
        return f"<Agent {self.name} {self.version} backend={self.backend}>"

    def infer(self, inputs: np.ndarray) -> np.ndarray:
        """Run the network.

        Args:
            inputs: float32 ``[n, input_size]`` (or ``[input_size]`` for one record). Arrays that
                are not C-contiguous are copied first.

        Returns:
            A new float32 array ``[n, output_size]`` (or ``[output_size]``).

        Raises:
            InferenceError: AF5030 for a dtype other than float32, AF5031 for a wrong shape,
                AF5032 after `close`, AF5033/AF5014/AF5015 when the backend fails.
            ResourceLimitError: AF5010/AF5011 when a wasm call runs out of fuel or memory; only
                this call fails, the agent stays usable.
            AgentTrap: AF5001 when the wasm module traps; the agent stays usable. For a batch,
                the caller may retry the records one by one to find the one at fault.
        """
        if type(inputs) is not np.ndarray or inputs.dtype != _F32:
            inputs = self._as_plain_array(inputs)
        shape = inputs.shape
        if len(shape) == 2 and shape[1] == self.input_size:
            if 0 < shape[0] <= self.max_batch and inputs.flags.c_contiguous:
                return self._run(inputs)
            return self._infer_split(np.ascontiguousarray(inputs))
        if len(shape) == 1 and shape[0] == self.input_size:
            return self.infer(inputs.reshape(1, -1))[0]
        raise InferenceError(
            f"agent `{self.name}` takes [n, {self.input_size}] or [{self.input_size}] inputs, got {list(shape)}",
            code="AF5031",
            hint=f"each record has {self.input_size} floats",
            agent=self.name,
        )

    def _infer_split(self, inputs: np.ndarray) -> np.ndarray:
        n, step = inputs.shape[0], self.max_batch
        if n == 0:
            return np.empty((0, self.output_size), dtype=_F32)
        return np.concatenate([self._run(inputs[i : i + step]) for i in range(0, n, step)])

    def _as_plain_array(self, inputs: Any) -> np.ndarray:
        # A float32 ndarray subclass (memmap, ...) is viewed as a plain array; anything else is refused
        # rather than converted, so that a float64 pipeline does not silently pay a copy per call.
        if isinstance(inputs, np.ndarray) and inputs.dtype == _F32:
            return inputs.view(np.ndarray)
        found = inputs.dtype if isinstance(inputs, np.ndarray) else type(inputs).__name__
        raise InferenceError(
            f"agent `{self.name}` takes float32 arrays, got {found}",
            code="AF5030",
            hint="convert with numpy.asarray(x, dtype=numpy.float32)",
            agent=self.name,
        )

    @property
    def fuel_used(self) -> int | None:
        """Fuel consumed by the last wasm call (None on the ONNX backend), for profilers."""
        return getattr(self._engine, "fuel_used", None)

    @property
    def fuel_per_record(self) -> int | None:
        """The wasm fuel budget of one record (None on the ONNX backend)."""
        return getattr(self._engine, "fuel_per_record", None)

    def replica(self) -> Agent:
        """Return an independent agent sharing this one's compiled code.

        wasm: a new Store and Instance of the same `wasmtime.Module` (weights mapped
        copy-on-write). onnx: the same `InferenceSession`, whose ``run`` is thread-safe.

        Raises:
            InferenceError: AF5032 after `close`.
        """
        if self._engine is None:
            raise self._closed_error()
        return Agent(self.bundle, self._engine.replica(), backend=self.backend, weights=self._weights)

    def weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the agent's current weights.

        Returns:
            ``(weight [out, in], bias [out])`` per dense layer, float32 copies (the layout of
            `afcore.learning`): changing them changes nothing until passed to `set_weights`.

        Raises:
            BundleError: AF6101 on the wasm backend of an ABI v1 bundle (its weights cannot be
                located); AF6102 when model.onnx lacks the layer initializers.
        """
        return [(w.copy(), b.copy()) for w, b in self._weights.current()]

    def set_weights(self, layers: Sequence[tuple[Any, Any]]) -> None:
        """Replace the agent's weights, for this agent and all its replicas, from the next `infer` on.

        Call it between inference calls (a call already running finishes with the old weights).

        Args:
            layers: ``(weight [out, in], bias [out])`` per dense layer, as `weights` returns; copied.

        Raises:
            UsageError: AF6100 when the shapes do not fit the network, AF6103 for NaN or infinity.
            BundleError: AF6101 on the wasm backend of an ABI v1 bundle (read-only weights), AF6102
                when model.onnx lacks the layer initializers.
            InferenceError: AF5032 after `close`.
        """
        if self._engine is None:
            raise self._closed_error()
        checked = ensure_layers(layers, self.bundle.layers, agent=self.name)
        self._weights.current()  # the backend can locate its weights (AF6101/AF6102) before anything changes
        self._engine.set_weights(checked)
        self._weights.replace(checked)

    def input_normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the ``(mean, scale)`` the network applies to its inputs first (``(x - mean) / scale``),
        or None when it applies none (a learner must see the inputs as the network does).

        Raises:
            BundleError: AF6101 on the wasm backend of an ABI v1 bundle.
        """
        engine = self._engine
        if engine is None:
            raise self._closed_error()
        return engine.read_normalization()

    @property
    def weights_generation(self) -> int:
        """How many times `set_weights` replaced the weights of this agent and its replicas (0: as loaded)."""
        return self._weights.generation

    def close(self) -> None:
        """Release the backend; later calls to `infer` raise `InferenceError` AF5032. Idempotent."""
        engine, self._engine = self._engine, None
        if engine is not None:
            self._run = self._raise_closed
            engine.close()
            self._layer_events = getattr(engine, "layer_events", _no_layer_events)()
            self._staged_calls = getattr(engine, "staged_calls", list)()

    def layer_events(self) -> tuple[int, list[dict]]:
        """Return onnxruntime's profile of the calls so far (loaded with ``profile_layers``): its start
        in ns on the system clock and its node events (``name``, ``ts`` and ``dur`` in µs). The
        profile ends at the first call (or at `close`); (0, []) for the wasm backend or without it."""
        if self._engine is None:
            return getattr(self, "_layer_events", (0, []))
        return getattr(self._engine, "layer_events", _no_layer_events)()

    def staged_calls(self) -> list[Any]:
        """Return the wasm calls made stage by stage so far (loaded with ``profile_layers``): each an
        `afrt.sandbox.StagedCall`, with `time.perf_counter` readings around every stage and its fuel.
        Every replica's calls are listed (they share the record); empty without ``profile_layers``."""
        if self._engine is None:
            return list(getattr(self, "_staged_calls", ()))
        return getattr(self._engine, "staged_calls", list)()

    def stages(self) -> Any:
        """Return a new instance of the agent's wasm module, to run one stage at a time (per-layer timing).

        The instance is the agent's own (not one its replicas use), with the agent's memory cap and a
        whole call's fuel per `load`: see `afrt.sandbox.WasmStages`. Close it when done.

        Raises:
            UsageError: AF5502 on the onnx backend (its per-layer time comes from ``profile_layers``).
            BundleError: AF5500 when the module has no per-stage exports (a bundle compiled before them);
                the message says so.
            InferenceError: AF5032 after `close`.
        """
        if self._engine is None:
            raise self._closed_error()
        stages = getattr(self._engine, "stages", None)
        if stages is None:
            raise UsageError(f"agent `{self.name}` runs on {self.backend}: only the wasm backend runs stage by stage",
                             code="AF5502", hint="load it with backend='wasm', or use profile_layers on onnx")
        return stages(layers=len(self.bundle.layers))

    def _raise_closed(self, inputs: np.ndarray) -> np.ndarray:
        raise self._closed_error()

    def _closed_error(self) -> InferenceError:
        return InferenceError(f"agent `{self.name}` is closed", code="AF5032", agent=self.name)

    def __enter__(self) -> Agent:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check_options(backend: str, fuel_per_record: int | None, threads: int | None) -> None:
    problems = []
    if backend not in BACKENDS:
        problems.append(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if fuel_per_record is not None and (type(fuel_per_record) is not int or fuel_per_record < 1):
        problems.append(f"fuel_per_record must be a positive integer, not {fuel_per_record!r}")
    if threads is not None and (type(threads) is not int or threads < 1):
        problems.append(f"threads must be a positive integer, not {threads!r}")
    if problems:
        raise UsageError("; ".join(problems), code="AF5090")


def _wasm_engine(bundle: LoadedBundle, fuel_per_record: int | None, cache_dir: Path | None,
                 profile_layers: bool = False) -> Backend:
    from . import sandbox
    from .modcache import ModuleCache

    wasm = bundle.member("wasm")
    if not isinstance(wasm, (bytes, bytearray, memoryview)):  # an `afcore.bundle.MemberFile` (`load`'s ``lean``)
        wasm = wasm.read_bytes()
    abi = bundle.wasm_abi()
    sandbox.ensure_abi(abi)
    module = ModuleCache(cache_dir).load(wasm, member="model.wasm")
    sandbox.ensure_policy(module, policy=sandbox.policy_for(abi))
    memory_mb = bundle.limit("memory_mb") or DEFAULT_MEMORY_MB
    limits = sandbox.InstanceLimits(
        agent=bundle.name,
        input_size=bundle.input_size,
        output_size=bundle.output_size,
        memory_limit=int(memory_mb * 2**20),
        fuel_per_record=fuel_per_record or sandbox.fuel_per_record(list(bundle.layers)),
        layers=tuple(bundle.layers) if abi != 1 else (),
    )
    pool = sandbox.WasmPool(module, limits)
    if profile_layers:
        problem = sandbox.stage_exports_problem(module)
        if problem is None:
            return sandbox.StagedWasmBackend(pool, len(bundle.layers))
        backend = sandbox.WasmBackend(pool)
        backend.notices = [f"per-layer time is not available: {problem}"]  # type: ignore[attr-defined]
        return backend
    return sandbox.WasmBackend(pool)


def _onnx_engine(bundle: LoadedBundle, threads: int | None, profile_dir: str | None = None) -> Backend:
    from .inference import OnnxModel, ensure_safe_onnx, ensure_safe_onnx_file, session_threads, threads_notice

    member = bundle.member("onnx")
    if isinstance(member, (bytes, bytearray, memoryview)):
        ensure_safe_onnx(member)
        source: bytes | str = bytes(member)
    else:
        # A member the bundle reader wrote to a private file (`afcore.bundle.MemberFile`, see `load`'s
        # ``lean``): checked through a memory map, then read by onnxruntime itself, so that no copy of the
        # weights is held in Python while onnxruntime makes its two (docs/runtime.md, "Memory").
        ensure_safe_onnx_file(member.path)
        source = member.path
    try:
        model = OnnxModel(
            source,
            agent=bundle.name,
            input_name=bundle.input_name,
            output_name=bundle.output_name,
            threads=session_threads(bundle.limit("cpu_cores"), threads),
            profile_dir=profile_dir,
        )
    except BaseException:
        if isinstance(source, str):
            member.remove()
        raise
    if isinstance(source, str):
        # The file lives as long as the model: set_weights (online and federated learning) makes the
        # session again from it. It costs disk, not memory, and goes with the model or at exit.
        model.backing_file = member
    model.ensure_signature(bundle.input_size, bundle.output_size)
    notice = threads_notice(bundle.limit("cpu_cores"), threads)
    model.notices = [notice] if notice else []
    return model


def _no_layer_events() -> tuple[int, list[dict]]:
    return 0, []


def _profile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="af-onnx-profile-")


def load(
    bundle: str | os.PathLike | bytes | Any,
    *,
    backend: str = "onnx",
    fuel_per_record: int | None = None,
    threads: int | None = None,
    cache_dir: Path | str | None = None,
    max_total_bytes: int | None = None,
    profile_layers: bool = False,
    trust: Sequence[Any] | None = None,
    state_dir: str | os.PathLike | None = None,
    lean: bool = False,
) -> Agent:
    """Load a bundle into an agent on one backend.

    Args:
        bundle: a path to an .afb, its bytes, an `afcore.bundle.Bundle`, or a `LoadedBundle`.
        backend: ``"onnx"`` (onnxruntime) or ``"wasm"`` (wasmtime, fuel- and memory-limited).
        fuel_per_record: wasm fuel per record; default derived from the network's size
            (`afrt.sandbox.fuel_per_record`).
        threads: onnxruntime intra-op threads; default ``ceil(resources.limits.cpu_cores)``.
        cache_dir: the compiled-module cache (wasm); default ``$XDG_CACHE_HOME/af/modules``.
        max_total_bytes: cap on what the bundle may decompress to (`afcore.bundle.MAX_TOTAL_BYTES`,
            1 GiB, when None); raise it for a trusted bigger bundle.
        profile_layers: onnx: turn on onnxruntime's profiler, which times every node of every call;
            `Agent.layer_events` returns what it measured. wasm: run every call stage by stage (the
            module's per-stage exports) and record when each stage ran, for `Agent.staged_calls`; a
            module without those exports runs whole, with a notice (`af profile --trace`).
        trust: `afcore.signing.PublicKey` s: the bundle must be signed by one of them
            (`load_bundle`); None loads unsigned bundles too.
        state_dir: with ``trust``, the state directory where the highest signed version that ran
            is kept per agent and key (`afrt.trust.check_rollback`): an older one is refused.
        lean: when reading a path or bytes, keep only the backend's model, and an ONNX model of
            more than `afcore.bundle.LARGE_MEMBER_BYTES` not even that: it goes to a private
            temporary file that onnxruntime reads, removed once it has (``af run``; peak memory about
            twice the weights instead of about four times). `Agent.bundle` then lacks the other
            members (`afcore.bundle.Bundle.left_out`).

    Returns:
        The `Agent`.

    Raises:
        UsageError: AF5090 for a bad option.
        BundleError: the bundle is corrupt, unsupported or lacks the backend (AF4xxx, AF5040-AF5046);
            AF6101 on the wasm backend when the agent learns (update_weights) and its module is ABI v1;
            with ``trust``: unsigned, untrusted, forged or altered (AF4050-AF4055), or a rollback
            (AF4056, AF4057).
        SandboxViolation: AF5020 (wasm imports), AF5021 (ONNX external data), AF5022 (custom ops).
        ResourceLimitError: AF5012 when the module cannot start within ``memory_mb``.
    """
    _check_options(backend, fuel_per_record, threads)
    if isinstance(bundle, LoadedBundle):
        loaded = bundle
        if trust is not None:
            ensure_trusted(loaded, trust)
    else:
        keep = target_keeper((backend,)) if lean else None
        loaded = load_bundle(bundle, max_total_bytes=max_total_bytes, trust=trust, keep=keep,
                             spill_over=LARGE_MEMBER_BYTES if lean else None)
    if trust is not None and state_dir is not None:
        from .trust import check_rollback

        check_rollback(state_dir, loaded.name, loaded.signature)
    if backend == "wasm":
        engine = _wasm_engine(loaded, fuel_per_record, Path(cache_dir) if cache_dir is not None else None,
                              profile_layers)
        if not engine.pool.writable and learning_step(loaded.workflows.get("execution", ())) is not None:
            raise BundleError(
                f"agent `{loaded.name}` learns (update_weights), and its WebAssembly module has read-only weights "
                "(ABI v1)", code="AF6101",
                hint="recompile the bundle with this af (ABI v2 modules have writable weights), or use `--backend onnx`",
            )
    else:
        engine = _onnx_engine(loaded, threads, _profile_dir() if profile_layers else None)
    return Agent(loaded, engine, backend=backend)
