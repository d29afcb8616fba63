"""The WebAssembly sandbox: one shared wasmtime Engine, the allow-list policy, and instances.

The policy is data, checked in one place (`ensure_policy`), as Jinja's sandbox keeps its rules in
``is_safe_callable``: an agent module may import nothing (no host functions, no WASI) and must
export the entry points of its ABI (v1, or v2 with ``weights_ptr``) with their types. Everything an agent can do is compute on
its own linear memory, bounded by fuel (per call) and a memory cap (per store).

All agents in a process share one `Engine`; the replicas of one agent share one `wasmtime.Module`
and a `WasmPool` of instances, each with its own Store (fuel, memory cap). With
``memory_init_cow`` wasmtime maps the module's data segments (the weights) copy-on-write from
one image, so an instance costs only the pages it writes.

ABI v2 modules also say where each layer's weights live (``weights_ptr``): `WasmPool.set_weights`
writes new weights into every instance of the pool, in the module's blocked layout
(`afrt.weights.pack_blocked`); an instance made or handed out later gets them before its call.
The weights of a v1 module are read-only (AF6101).

A module compiled by this af also has the optional per-stage exports ``stage_count``/``stage``
(`STAGE_EXPORTS`, docs/bundle.md): `WasmStages` runs an instance one stage at a time under the same
limits, for per-layer timing (`afprof`), and `StagedWasmBackend` runs every call that way and
records it (``profile_layers``). A module without them runs as before.
"""

from __future__ import annotations

import functools
import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import version as _dist_version
from typing import Callable, Mapping

import numpy as np
import wasmtime

from afcore.errors import AfError, BundleError, InferenceError, ResourceLimitError, SandboxViolation

from ._errormap import WasmCallErrors, map_wasm_instantiate_errors
from ._fastcall import fast_func, memory_view

__all__ = [
    "ABI_VERSION",
    "ENGINE_CONFIG",
    "POLICY",
    "POLICY_V2",
    "SUPPORTED_ABIS",
    "InstanceLimits",
    "STAGE_EXPORTS",
    "SandboxPolicy",
    "StagedCall",
    "StagedWasmBackend",
    "WasmBackend",
    "WasmInstance",
    "WasmPool",
    "WasmStages",
    "engine_fingerprint",
    "ensure_abi",
    "ensure_policy",
    "fuel_per_record",
    "packed_size",
    "policy_for",
    "shared_engine",
    "stage_exports_problem",
]

#: the newest WebAssembly ABI version this sandbox implements (docs/bundle.md)
ABI_VERSION = 2
#: the ABI versions it runs: v1 bundles keep running, with read-only weights
SUPPORTED_ABIS = (1, 2)
#: wasmtime Config settings of the shared engine; part of the module-cache key
ENGINE_CONFIG: Mapping[str, object] = {
    "consume_fuel": True,
    # Data segments (the weights) mapped copy-on-write: replicas share them (benchmark 4).
    "memory_init_cow": True,
    # A fixed base address keeps the host's numpy view over linear memory valid after memory.grow.
    "memory_may_move": False,
    "cranelift_opt_level": "speed",
    "wasm_simd": True,
    "wasm_relaxed_simd": False,
    "wasm_threads": False,
}

#: fuel per record for each multiply-accumulate of the network. wasmtime charges about one unit
#: per wasm instruction; the compiler's f32x4 kernels measured 2.3-2.6 per MAC on large layers
#: (docs/runtime.md, "Backends and sandbox"), so 4 leaves a margin of about 1.6x on the MACs alone
FUEL_PER_MAC = 4
#: fuel per record for each neuron: bias, activation (exp/tanh/erf polynomials) and loop overhead,
#: measured 50-150 per neuron on small layers
FUEL_PER_NEURON = 400
#: fuel per record on top of the network (per-record loop and pointer set-up, measured under 100)
FUEL_PER_RECORD = 1_000
#: how many times its budget a call that ran out of fuel gets, once, to measure what it needed (AF5010)
FUEL_PROBE_FACTOR = 10
#: fuel per call on top of the per-record budgets (prologue; also granted to instantiation)
FUEL_PER_CALL = 10_000


@dataclass(frozen=True)
class SandboxPolicy:
    """What a sandboxed agent module may use: the allow-list checked by `ensure_policy`.

    Attributes:
        allowed_imports: (module, name) pairs a module may import; empty: no host functions at all
            (and so no WASI: nothing is ever linked).
        exports: export name -> ("memory",) or ("func", params, results) as wasm type names.
    """

    allowed_imports: frozenset[tuple[str, str]] = frozenset()
    exports: Mapping[str, tuple] = field(
        default_factory=lambda: {
            "memory": ("memory",),
            "input_ptr": ("func", (), ("i32",)),
            "output_ptr": ("func", (), ("i32",)),
            "max_batch": ("func", (), ("i32",)),
            "infer": ("func", ("i32",), ("i32",)),
        }
    )


#: the policy of ABI v1
POLICY = SandboxPolicy()
#: the policy of ABI v2: v1's exports, ``weights_ptr(layer) -> address`` (0: no such layer) and
#: ``normalization_ptr() -> address`` (0: no input normalisation)
POLICY_V2 = SandboxPolicy(exports={**POLICY.exports, "weights_ptr": ("func", ("i32",), ("i32",)),
                                   "normalization_ptr": ("func", (), ("i32",))})


def policy_for(abi: object) -> SandboxPolicy:
    """Return the policy of a manifest's ``wasm.abi`` (`ensure_abi` has checked it)."""
    return POLICY_V2 if abi == 2 else POLICY


@functools.cache
def shared_engine() -> wasmtime.Engine:
    """Return the process-wide engine configured with `ENGINE_CONFIG`.

    Returns:
        The same `wasmtime.Engine` on every call, so that modules and stores can be shared.
    """
    config = wasmtime.Config()
    for name, value in ENGINE_CONFIG.items():
        setattr(config, name, value)
    return wasmtime.Engine(config)


@functools.cache
def engine_fingerprint() -> str:
    """Return a string naming everything a serialized module depends on.

    Returns:
        wasmtime version, machine, and the engine settings; the module cache keys files by it.
    """
    settings = ",".join(f"{k}={v}" for k, v in sorted(ENGINE_CONFIG.items()))
    return f"wasmtime={_dist_version('wasmtime')};machine={platform.machine()};{settings}"


def fuel_per_record(layers: list[tuple[int, int]]) -> int:
    """Return the default fuel budget of one record for a feedforward network.

    ``FUEL_PER_MAC * sum(in * out) + FUEL_PER_NEURON * sum(out) + FUEL_PER_RECORD``; a call on
    ``n`` records gets ``n * fuel_per_record + FUEL_PER_CALL``. For the 784-128-64-32-10
    reference network that is 538,248 per record, 1.9x the 284,476 its module uses at batch 1.

    Args:
        layers: (in, out) of each dense layer.

    Returns:
        The fuel units of one record.
    """
    macs = sum(i * o for i, o in layers)
    neurons = sum(o for _, o in layers)
    return FUEL_PER_MAC * macs + FUEL_PER_NEURON * neurons + FUEL_PER_RECORD


def _type_name(ty: object) -> str:
    return str(ty)


def _describe_export(ty: object) -> tuple:
    if isinstance(ty, wasmtime.MemoryType):
        return ("memory",)
    if isinstance(ty, wasmtime.FuncType):
        return ("func", tuple(map(_type_name, ty.params)), tuple(map(_type_name, ty.results)))
    return (type(ty).__name__,)


def ensure_abi(abi: object) -> None:
    """Check the manifest's ``wasm.abi`` against the ABI this sandbox implements.

    Raises:
        BundleError: AF5042 for an ABI version other than `SUPPORTED_ABIS`.
    """
    if abi not in SUPPORTED_ABIS or isinstance(abi, bool):
        raise BundleError(
            f"the bundle's wasm module uses ABI {abi!r}, and this runtime runs ABI 1 and {ABI_VERSION}",
            code="AF5042",
            hint="recompile the bundle with this af, or run it with `--backend onnx`",
        )


def ensure_policy(module: wasmtime.Module, *, member: str = "model.wasm", policy: SandboxPolicy = POLICY) -> None:
    """Check a compiled module against the sandbox policy.

    Args:
        module: the compiled module.
        member: its bundle member name, for messages.
        policy: the allow-list; `POLICY` unless testing.

    Raises:
        SandboxViolation: AF5020 when the module imports anything not allowed (ABI v1: anything).
        BundleError: AF5042 when an ABI export is missing or has the wrong type.
    """
    for imp in module.imports:
        if (imp.module, imp.name) not in policy.allowed_imports:
            raise SandboxViolation(
                f"`{member}` imports `{imp.module}.{imp.name}`, and agent modules may import nothing",
                code="AF5020",
                hint="agent modules are pure computation (ABI v1: no imports, no WASI); "
                "this bundle was not produced by `af compile`",
            )
    found = {exp.name: _describe_export(exp.type) for exp in module.exports}
    for name, want in policy.exports.items():
        if found.get(name) != want:
            raise BundleError(
                f"`{member}` does not follow ABI v{2 if policy is POLICY_V2 else 1}: export `{name}` is "
                f"{found.get(name, 'missing')}, expected {want}",
                code="AF5042",
                hint="see docs/bundle.md, WebAssembly ABI; recompile the bundle with `af compile`",
            )


@dataclass(frozen=True)
class InstanceLimits:
    """What every instance of an agent's module is created with.

    Attributes:
        agent: the agent's name, for errors.
        input_size: floats per input record.
        output_size: floats per output record.
        memory_limit: cap on linear memory, in bytes (``Store.set_limits``).
        fuel_per_record: fuel budget of one record (see `fuel_per_record`).
        layers: (in, out) of each layer when the module's weights are writable (ABI v2), else empty.
    """

    agent: str
    input_size: int
    output_size: int
    memory_limit: int
    fuel_per_record: int
    layers: tuple[tuple[int, int], ...] = ()


class WasmInstance:
    """One Store (fuel, memory cap) and one Instance of an agent module, with views over its buffers.

    Used by one call at a time (`WasmPool` hands it out). After a failed call it must be dropped:
    a trap can leave its memory half-written or grown.

    Args:
        module: the compiled module (checked with `ensure_policy`).
        limits: the agent's limits.

    Raises:
        ResourceLimitError: AF5012 when the module's initial memory exceeds the memory cap.
        AgentTrap: AF5001 when its start function traps.
        BundleError: AF5042 when the module's buffers do not fit its memory.
    """

    #: the instance run stage by stage (`StagedWasmBackend`), made on its first such call
    staged: WasmStages | None = None

    def __init__(self, module: wasmtime.Module, limits: InstanceLimits) -> None:
        self.limits = limits
        #: calls made so far; lets a backend tell whether the fuel counter is still its own
        self.calls = 0
        self.fuel_budget = 0
        #: the `WasmPool.generation` of the weights in this instance's memory
        self.generation = 0
        store = wasmtime.Store(shared_engine())
        store.set_limits(memory_size=limits.memory_limit, instances=1, tables=1, memories=1)
        store.set_fuel(FUEL_PER_CALL)  # for a start function and the three pointer getters
        with map_wasm_instantiate_errors(limits.agent, limits.memory_limit):
            instance = wasmtime.Instance(store, module, [])
            exports = instance.exports(store)
            self.max_batch: int = exports["max_batch"](store)
            input_ptr, output_ptr = exports["input_ptr"](store), exports["output_ptr"](store)
            where = exports.get("weights_ptr") if limits.layers else None
            pointers = [where(store, k) for k in range(len(limits.layers))] if where is not None else None
            #: the address of the input means, then scales (0: none); None for an ABI v1 module
            self.normalization_ptr = exports["normalization_ptr"](store) if where is not None else None
        self.store, self.memory = store, exports["memory"]
        #: one writable view per layer over its packed weights and bias (ABI v2), else None
        self.weight_views = self._weight_views(pointers) if pointers is not None else None
        self._exports = exports  # the optional ones are looked up on demand (`stages`)
        self._infer = fast_func(store, exports["infer"])
        self._input, self._output = self._views(input_ptr, output_ptr)
        self._errors = WasmCallErrors(limits.agent, limits.memory_limit, self.memory_pages)
        self._errors.start_pages = self.memory_pages()

    def _views(self, input_ptr: int, output_ptr: int) -> tuple[np.ndarray, np.ndarray]:
        # One numpy view per buffer, made once: memory never moves (ENGINE_CONFIG) nor shrinks.
        size = self.memory.data_len(self.store)
        limits, batch = self.limits, self.max_batch
        n_in, n_out = batch * limits.input_size, batch * limits.output_size
        if batch < 1 or not _fits(input_ptr, n_in * 4, size) or not _fits(output_ptr, n_out * 4, size):
            raise BundleError(
                f"the module's buffers (input at {input_ptr}, output at {output_ptr}, max_batch "
                f"{batch}) do not fit its {size}-byte memory",
                code="AF5042",
                hint="see docs/bundle.md, WebAssembly ABI v1; recompile the bundle with `af compile`",
            )
        view_in = memory_view(self.store, self.memory, input_ptr, n_in, np.dtype("<f4"))
        view_out = memory_view(self.store, self.memory, output_ptr, n_out, np.dtype("<f4"))
        return view_in.reshape(batch, limits.input_size), view_out.reshape(batch, limits.output_size)

    def _weight_views(self, pointers: list[int]) -> list[np.ndarray]:
        size, views = self.memory.data_len(self.store), []
        for ptr, (n_in, n_out) in zip(pointers, self.limits.layers):
            count = packed_size(n_in, n_out)
            if ptr <= 0 or not _fits(ptr, count * 4, size):
                raise BundleError(
                    f"the module's weights_ptr gives {ptr} for a layer of {count * 4} bytes, "
                    f"outside its {size}-byte memory",
                    code="AF5042",
                    hint="see docs/bundle.md, WebAssembly ABI v2; recompile the bundle with `af compile`",
                )
            views.append(memory_view(self.store, self.memory, ptr, count, np.dtype("<f4")))
        return views

    def load_weights(self, packed: list[np.ndarray], generation: int) -> None:
        """Write packed layers (`afrt.weights.pack_blocked`) over this instance's weights."""
        for view, values in zip(self.weight_views, packed):
            view[:] = values
        self.generation = generation

    def memory_pages(self) -> int:
        """Return the current size of the linear memory in pages."""
        return self.memory.size(self.store)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run ``n <= max_batch`` records.

        Args:
            inputs: float32 array ``[n, input_size]``, n between 1 and ``max_batch``.

        Returns:
            A new float32 array ``[n, output_size]``.

        Raises:
            ResourceLimitError: AF5010 (fuel) or AF5011 (memory).
            AgentTrap: AF5001 when the module traps.
            InferenceError: AF5014 when ``infer`` returns a non-zero status.
        """
        n = inputs.shape[0]
        self._input[:n] = inputs
        self.calls += 1
        self.fuel_budget = n * self.limits.fuel_per_record + FUEL_PER_CALL
        self.store.set_fuel(self.fuel_budget)
        try:
            with self._errors:
                status = self._infer(n)
        except ResourceLimitError as exc:
            if exc.code == "AF5010":
                raise self._fuel_error(exc, n) from exc.__cause__
            raise
        if status != 0:
            raise _status_error(self.limits.agent, status)
        return self._output[:n].copy()

    def _fuel_error(self, exc: ResourceLimitError, n: int) -> ResourceLimitError:
        """Say what the call had and what it would have needed: the call is run once more with
        `FUEL_PROBE_FACTOR` times the budget (only after it ran out, so it costs nothing otherwise)."""
        budget = self.fuel_budget
        self.store.set_fuel(budget * FUEL_PROBE_FACTOR)
        try:
            with self._errors:
                self._infer(n)
            needed = f"it needed {budget * FUEL_PROBE_FACTOR - self.store.get_fuel():,}"
        except AfError:
            needed = f"it needed more than {budget * FUEL_PROBE_FACTOR:,} ({FUEL_PROBE_FACTOR}x the budget)"
        self.store.set_fuel(0)  # `fuel_used` still says the call used its whole budget
        exc.message = (f"{exc.message}: the call for {n} record(s) had a budget of {budget:,} fuel "
                       f"({self.limits.fuel_per_record:,} per record); {needed}")
        exc.hint = "raise `--fuel` (fuel per record) if the module legitimately needs more"
        return exc

    def fuel_used(self) -> int:
        """Return the fuel consumed by the last `run`."""
        return self.fuel_budget - self.store.get_fuel()


class WasmPool:
    """The instances of one agent module, shared by all its replicas.

    ABI v1 modules keep no state between calls (the host writes the input, calls ``infer``,
    reads the output), so a replica needs an instance only while it calls. Replicas take an idle
    instance for each call and give it back, and a new one is made only when all are busy:
    1,000 replicas driven from one thread use one instance, not 1,000 (each instance maps the
    weights and reserves 4 GiB of address space). An instance whose call failed is dropped, so
    a trap, a fuel or memory exhaustion never reaches another call.

    Args:
        module: the compiled, policy-checked module.
        limits: the agent's limits.
        max_idle: idle instances kept for reuse; more are dropped when given back.

    Raises:
        ResourceLimitError, AgentTrap, BundleError: from creating the first instance (see `WasmInstance`).
    """

    def __init__(self, module: wasmtime.Module, limits: InstanceLimits, *, max_idle: int = 16) -> None:
        self.module, self.limits, self.max_idle = module, limits, max_idle
        first = WasmInstance(module, limits)  # fail at load time, not at the first record
        self.max_batch = first.max_batch
        #: True when the module says where its weights live (ABI v2), so `set_weights` can replace them
        self.writable = first.weight_views is not None
        self.created = 1
        self._idle = [first]
        #: (generation, the replaced weights packed per layer): one tuple, swapped whole, so that a
        #: thread never pairs a generation with other weights (generation 0: the module's own)
        self._current: tuple[int, list[np.ndarray] | None] = (0, None)

    @property
    def generation(self) -> int:
        """How many times `set_weights` replaced the weights (0: the module's own)."""
        return self._current[0]

    def acquire(self) -> WasmInstance:
        """Return an idle instance, or a new one when none is idle (thread-safe: list.pop is atomic).

        Its memory holds the pool's current weights."""
        try:
            instance = self._idle.pop()
        except IndexError:
            self.created += 1
            instance = WasmInstance(self.module, self.limits)
        current = self._current
        if instance.generation != current[0]:
            instance.load_weights(current[1], current[0])
        return instance

    def read_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the module's current weights, ``(weight [out, in], bias [out])`` per layer (new arrays).

        Raises:
            BundleError: AF6101 for a module whose weights are read-only (ABI v1).
        """
        from .weights import unpack_blocked

        self._ensure_writable()
        instance = self.acquire()
        try:
            return [unpack_blocked(view, n_out, n_in) for view, (n_in, n_out) in
                    zip(instance.weight_views, self.limits.layers)]
        finally:
            self.release(instance)

    def read_normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the input normalisation ``(mean, scale)`` the module applies, or None without one.

        Raises:
            BundleError: AF6101 for an ABI v1 module (it does not say); AF5042 when it lies outside memory.
        """
        self._ensure_writable()
        instance = self.acquire()
        try:
            ptr, n = instance.normalization_ptr, self.limits.input_size
            if not ptr:
                return None
            if not _fits(ptr, 8 * n, instance.memory.data_len(instance.store)):
                raise BundleError(f"the module's normalization_ptr {ptr} lies outside its memory", code="AF5042",
                                  hint="see docs/bundle.md, WebAssembly ABI v2; recompile the bundle with `af compile`")
            values = np.array(memory_view(instance.store, instance.memory, ptr, 2 * n, np.dtype("<f4")), np.float32)
            return values[:n], values[n:]
        finally:
            self.release(instance)

    def set_weights(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Write new weights (checked by `afrt.weights.ensure_layers`) into every instance of the pool.

        Idle instances are written now; one busy in a call gets them when it is next handed out.

        Raises:
            BundleError: AF6101 for a module whose weights are read-only (ABI v1).
        """
        from .weights import pack_blocked

        self._ensure_writable()
        generation, packed = self._current[0] + 1, [pack_blocked(weight, bias) for weight, bias in layers]
        self._current = (generation, packed)
        for instance in list(self._idle):
            instance.load_weights(packed, generation)

    def _ensure_writable(self) -> None:
        if not self.writable:
            raise BundleError(
                f"the WebAssembly module of agent `{self.limits.agent}` has read-only weights (ABI v1)",
                code="AF6101",
                hint="recompile the bundle with this af (ABI v2 modules have writable weights), or use `--backend onnx`",
            )

    def release(self, instance: WasmInstance) -> None:
        """Give back an instance whose last call succeeded."""
        if len(self._idle) < self.max_idle:
            self._idle.append(instance)

    @property
    def idle(self) -> int:
        """The number of idle instances."""
        return len(self._idle)


class WasmBackend:
    """One replica's view of a `WasmPool`: what `afrt.Agent` calls on the wasm backend.

    Args:
        pool: the agent's shared pool.
    """

    def __init__(self, pool: WasmPool) -> None:
        self.pool = pool
        self.max_batch = pool.max_batch
        self.fuel_per_record = pool.limits.fuel_per_record
        self._last: tuple[WasmInstance, int] | None = None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run ``n <= max_batch`` records on an instance of the pool (see `WasmInstance.run`)."""
        pool = self.pool
        instance = pool.acquire()
        self._last = (instance, instance.calls + 1)
        out = instance.run(inputs)  # on error the instance is not given back: a clean one replaces it
        pool.release(instance)
        return out

    @property
    def fuel_used(self) -> int | None:
        """Fuel consumed by this replica's last call; None before the first call, or when another
        replica has used that instance since (read it right after the call)."""
        if self._last is None or self._last[0].calls != self._last[1]:
            return None
        return self._last[0].fuel_used()

    def replica(self) -> WasmBackend:
        """Return another replica sharing the pool."""
        return WasmBackend(self.pool)

    def read_weights(self, shapes: object = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Return the pool's current weights (see `WasmPool.read_weights`)."""
        return self.pool.read_weights()

    def read_normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the module's input normalisation (see `WasmPool.read_normalization`)."""
        return self.pool.read_normalization()

    def set_weights(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace the weights of every replica (see `WasmPool.set_weights`)."""
        self.pool.set_weights(layers)

    def stages(self, *, layers: int) -> WasmStages:
        """Return a new instance of the module (the pool's limits), to run one stage at a time.

        Args:
            layers: the network's dense layers, from the manifest.

        Raises:
            BundleError: AF5500 when the module has no per-stage exports (`stage_exports_problem` says why).
            ResourceLimitError, AgentTrap: from creating the instance (see `WasmInstance`).
        """
        problem = stage_exports_problem(self.pool.module)
        if problem is not None:
            agent = self.pool.limits.agent
            raise BundleError(f"agent `{agent}`: per-layer time is not available: {problem}", code="AF5500",
                              hint="the bundle runs as it is; only its layers cannot be timed")
        return WasmStages(WasmInstance(self.pool.module, self.pool.limits), expected=layers + 2)

    def close(self) -> None:
        """Forget the last instance; the pool lives while any replica does."""
        self._last = None


def packed_size(n_in: int, n_out: int) -> int:
    """Return the float32 values of a layer in the blocked layout: weights in 4-neuron blocks, then the bias."""
    blocks = -(-n_out // 4)
    return blocks * n_in * 4 + blocks * 4


#: the optional exports that run a module one stage at a time (docs/bundle.md, "Per-stage exports"). A module
#: without them still runs (ABI v1 does not require them); only its per-layer timing is unavailable
STAGE_EXPORTS: Mapping[str, tuple] = {
    "stage_count": ("func", (), ("i32",)),
    "stage": ("func", ("i32", "i32"), ("i32",)),
}
#: what ``stage`` returns for an index past the last stage (`WasmStages.nothing` relies on it)
STAGE_BAD_INDEX = 2


def stage_exports_problem(module: wasmtime.Module) -> str | None:
    """Return why ``module`` cannot be run stage by stage, or None when it has the per-stage exports.

    Args:
        module: the compiled module (already checked with `ensure_policy`).

    Returns:
        A sentence for the user (it follows "per-layer time is not available: "), or None.
    """
    found = {exp.name: _describe_export(exp.type) for exp in module.exports}
    if not any(name in found for name in STAGE_EXPORTS):
        return ("the bundle's model.wasm has no per-stage exports (`stage_count`, `stage`): it was compiled "
                "before af had them; recompile it with `af compile` to time its layers")
    for name, want in STAGE_EXPORTS.items():
        if found.get(name) != want:
            return f"the bundle's model.wasm has export `{name}` as {found.get(name, 'missing')}, expected {want}"
    return None


@dataclass(frozen=True)
class StagedCall:
    """One backend call run stage by stage (`StagedWasmBackend`).

    Attributes:
        records: the records of the call.
        stages: per stage, in order: (start, end, fuel) with start and end `time.perf_counter` readings taken
            right around the stage's call into the module, and the fuel the stage used.
    """

    records: int
    stages: tuple[tuple[float, float, int], ...]


class WasmStages:
    """One instance of an agent's module, run one stage at a time through its per-stage exports.

    Stage 0 normalises the input (nothing without a normalisation), stages 1..L are the dense layers, stage
    L + 1 writes the output buffer. Run in order on the loaded records they compute what ``infer`` computes:
    ``stage`` calls the very functions ``infer`` calls, on the same memory. The limits are a whole call's:
    `load` grants the fuel budget of ``infer`` on those records, which the calls after it draw on in turn,
    and the store keeps the agent's memory cap. The calls are methods of equal cost (`nothing` is one that
    does no work), so that a caller timing each can subtract what the timing itself costs (`afprof.layers`).

    Made by `WasmBackend.stages` (``Agent.stages()``), on an instance of its own, not one of the pool's.

    Args:
        instance: a fresh instance of the module.
        expected: the number of stages the manifest implies (its layers + 2).

    Raises:
        BundleError: AF5500 when the module lacks the per-stage exports, or its ``stage_count`` is not
            ``expected``.
    """

    def __init__(self, instance: WasmInstance, *, expected: int) -> None:
        module_exports = instance._exports
        self.instance = instance
        agent = instance.limits.agent
        instance.store.set_fuel(FUEL_PER_CALL)
        try:
            stage_count = module_exports["stage_count"]
            with instance._errors:
                count = stage_count(instance.store)
        except KeyError:
            count = None
        if count != expected or "stage" not in module_exports:
            raise BundleError(
                f"agent `{agent}`: per-layer time is not available: the module's stage_count is {count}, "
                f"expected {expected} (input, {expected - 2} layers, output)",
                code="AF5500",
                hint="recompile the bundle with `af compile`; it runs as it is (only its layers cannot be timed)",
            )
        #: the number of stages
        self.count: int = count
        self._stage = fast_func(instance.store, module_exports["stage"])
        self._errors = instance._errors
        self._n = 0

    def load(self, inputs: np.ndarray) -> None:
        """Write ``n`` records into the input buffer and grant the fuel of an ``infer`` call on them.

        Args:
            inputs: float32 ``[n, input_size]``, n between 1 and ``max_batch``.

        Raises:
            InferenceError: AF5501 when n is out of range.
        """
        instance, n = self.instance, inputs.shape[0]
        if not 1 <= n <= instance.max_batch:
            raise _stage_error(instance.limits.agent, f"{n} records do not fit a call of at most {instance.max_batch}")
        instance._input[:n] = inputs
        instance.calls += 1
        instance.fuel_budget = n * instance.limits.fuel_per_record + FUEL_PER_CALL
        instance.store.set_fuel(instance.fuel_budget)
        self._n = n

    def run(self, index: int) -> None:
        """Run stage ``index`` on the loaded records.

        Raises:
            ResourceLimitError: AF5010/AF5011 (the call's fuel or the memory cap ran out).
            AgentTrap: AF5001 when the module traps.
            InferenceError: AF5501 when ``stage`` returns a non-zero status (a bad index).
        """
        with self._errors:
            status = self._stage(index, self._n)
        if status:
            raise _stage_error(self.instance.limits.agent, f"stage({index}, {self._n}) returned status {status}")

    def nothing(self) -> None:
        """Call ``stage`` with an index past the last: it returns at once. The cost of `run` without its work.

        Raises:
            InferenceError: AF5501 when it does not return `STAGE_BAD_INDEX`.
        """
        with self._errors:
            status = self._stage(self.count, self._n)
        if status != STAGE_BAD_INDEX:
            raise _stage_error(self.instance.limits.agent, f"stage({self.count}, {self._n}) returned status {status}")

    def infer(self) -> None:
        """Run the whole network on the loaded records with the module's ``infer``, as `WasmInstance.run` does.

        Raises:
            ResourceLimitError, AgentTrap: as `run`.
            InferenceError: AF5014 when ``infer`` returns a non-zero status.
        """
        with self._errors:
            status = self.instance._infer(self._n)
        if status:
            raise _status_error(self.instance.limits.agent, status)

    def fuel_used(self) -> int:
        """Return the fuel used since the last `load`."""
        return self.instance.fuel_budget - self.instance.store.get_fuel()

    def outputs(self) -> np.ndarray:
        """Return a copy of the output buffer's first ``n`` rows (n of the last `load`)."""
        return self.instance._output[: self._n].copy()

    def run_all(self, inputs: np.ndarray, clock: Callable[[], float] = time.perf_counter) -> tuple[np.ndarray, StagedCall]:
        """Run ``inputs`` through every stage in turn, reading ``clock`` right around each stage's call.

        Returns:
            The outputs (as `WasmInstance.run` returns them) and the `StagedCall`.

        Raises:
            ResourceLimitError: AF5010 (with the fuel the whole call would have needed) or AF5011.
            AgentTrap, InferenceError: as `run`.
        """
        self.load(inputs)
        marks = []
        used = 0
        try:
            for index in range(self.count):
                started = clock()
                self.run(index)
                ended = clock()
                fuel = self.fuel_used()
                marks.append((started, ended, fuel - used))
                used = fuel
        except ResourceLimitError as exc:
            if exc.code == "AF5010":
                raise self.instance._fuel_error(exc, self._n) from exc.__cause__
            raise
        return self.outputs(), StagedCall(self._n, tuple(marks))

    def close(self) -> None:
        """Drop the instance (its store and memory go with the last reference)."""
        self._stage = None  # type: ignore[assignment]


class StagedWasmBackend(WasmBackend):
    """A `WasmBackend` whose calls run stage by stage and are recorded (``afrt.load(..., profile_layers=True)``
    on wasm, for `af profile --trace`).

    The outputs are bit-identical to the plain backend's; each call costs one host call per stage instead of
    one in all, and the clock and fuel readings around them (docs/tools.md gives the figure). The replicas
    share the record of calls, as they share the pool.

    Args:
        pool: the agent's shared pool (of a module with the per-stage exports).
        layers: the network's dense layers (the stages are those + 2).
        calls: the shared record of calls (a new one when None).
    """

    def __init__(self, pool: WasmPool, layers: int, calls: list[StagedCall] | None = None) -> None:
        super().__init__(pool)
        self.layers = layers
        self._calls: list[StagedCall] = [] if calls is None else calls

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run ``n <= max_batch`` records stage by stage on an instance of the pool, and record the call."""
        pool = self.pool
        instance = pool.acquire()
        self._last = (instance, instance.calls + 1)
        stages = getattr(instance, "staged", None)  # made once per instance of the pool
        if stages is None:
            stages = instance.staged = WasmStages(instance, expected=self.layers + 2)
        out, call = stages.run_all(inputs)  # on error the instance is not given back, as in `WasmBackend.run`
        self._calls.append(call)  # list.append is atomic: replicas may call from several threads
        pool.release(instance)
        return out

    def replica(self) -> StagedWasmBackend:
        """Return another replica sharing the pool and the record of calls."""
        return StagedWasmBackend(self.pool, self.layers, self._calls)

    def staged_calls(self) -> list[StagedCall]:
        """Return the calls made so far by every replica, in the order they ended."""
        return list(self._calls)


def _stage_error(agent: str, what: str) -> InferenceError:
    return InferenceError(
        f"agent `{agent}`: {what}",
        code="AF5501",
        hint="stage indices run from 0 to stage_count - 1 and batches from 1 to max_batch (docs/bundle.md)",
        agent=agent,
    )


def _fits(ptr: int, nbytes: int, size: int) -> bool:
    return 0 <= ptr and ptr + nbytes <= size


def _status_error(agent: str, status: int) -> InferenceError:
    return InferenceError(
        f"agent `{agent}`: the module's infer() returned status {status}",
        code="AF5014",
        hint="ABI v1 modules return 0 on success; the bundle's module is faulty",
        agent=agent,
    )

