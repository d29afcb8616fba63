"""Time per network layer, measured in a separate pass so that it distorts nothing.

On the onnx backend the times come from onnxruntime's own profiler; on wasm from the module's
per-stage exports (`measure_wasm_layers`, below).

onnxruntime's profiler times every node of every call, but recording the events costs about 17 µs
per call (measured: batch 64, 65 -> 84 µs a call; batch 1, 8 -> 26 µs). So the profiled run is
never slowed by it: `measure_layers` runs a sample of the run's own blocks again, afterwards,
through a second session with the profiler on, and reports each layer's kernel time per call and
per record. A node's duration is its kernel's own time (the bookkeeping happens between nodes),
so the figures are those of the run's kernels. onnxruntime fuses a Gemm and its activation into
one node (``fused layers.0.gemm``); a layer's time is the sum of its nodes in one call.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .report import Distribution

__all__ = ["LAYER_SAMPLE_BLOCKS", "LayerPass", "LayerProfile", "StageProfile", "layer_calls", "measure_layers",
           "measure_wasm_layers"]

#: blocks of the run kept for the layer pass (their arrays are referenced, not copied)
LAYER_SAMPLE_BLOCKS = 32
#: calls the layer pass makes at least (the sample is run again until it has made this many)
LAYER_PASS_CALLS = 64
_LAYER_NODE = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class LayerProfile:
    """One layer's kernel time: ``seconds`` per call, ``per_record`` (a call's time over its records)."""

    layer: int
    ops: str
    calls: int
    seconds: Distribution
    per_record: Distribution
    #: wasm: the fuel a call of the layer used, over its records (None on onnx, which meters nothing)
    fuel_per_record: Distribution | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the layer's profile as plain JSON data."""
        return {"layer": self.layer, "ops": self.ops, "calls": self.calls, "seconds": self.seconds.to_json(),
                "per_record": self.per_record.to_json(),
                "fuel_per_record": None if self.fuel_per_record is None else self.fuel_per_record.to_json()}


@dataclass(frozen=True)
class StageProfile:
    """A wasm stage that is not a layer: ``input`` (the normalisation) or ``output`` (softmax, or the copy of
    the last layer's padded rows into the output buffer); each does nothing when the network needs neither."""

    stage: str
    calls: int
    seconds: Distribution
    fuel_per_record: Distribution

    def to_json(self) -> dict[str, Any]:
        """Return the stage's profile as plain JSON data."""
        return {"stage": self.stage, "calls": self.calls, "seconds": self.seconds.to_json(),
                "fuel_per_record": self.fuel_per_record.to_json()}


@dataclass(frozen=True)
class LayerPass:
    """How the layer times were measured, or why they were not.

    Attributes:
        method: ``onnxruntime-profiler`` or ``wasm-stages``.
        reason: why there are no layer times (None when there are).
        calls: calls timed (the warm-up excluded).
        call_seconds: the whole call, timed in the same pass the same way (wasm: ``infer``; onnx:
            onnxruntime's ``model_run``), to hold the layers' sum against.
        layers_seconds: per call, the sum of its layers' (and wasm stages') times.
        timer_seconds: wasm: what timing one call costs, subtracted from every time (the median of a call
            that does nothing, through the same path).
        stages: wasm: the stages that are not layers.
    """

    method: str
    reason: str | None = None
    calls: int = 0
    call_seconds: Distribution | None = None
    layers_seconds: Distribution | None = None
    timer_seconds: float | None = None
    stages: list[StageProfile] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the pass's description as plain JSON data."""
        return {"method": self.method, "available": self.reason is None, "reason": self.reason, "calls": self.calls,
                "call_seconds": None if self.call_seconds is None else self.call_seconds.to_json(),
                "layers_seconds": None if self.layers_seconds is None else self.layers_seconds.to_json(),
                "timer_seconds": self.timer_seconds, "stages": [stage.to_json() for stage in self.stages]}


def layer_calls(events: Iterable[dict]) -> list[tuple[int, str, float, float]]:
    """Group onnxruntime node events into (layer, op, start µs, duration µs), a layer's nodes of one
    call summed (they follow each other)."""
    calls: list[list] = []
    for event in events:
        found = _LAYER_NODE.search(event.get("name", ""))
        if found is None:
            continue
        layer, op = int(found.group(1)), str(event.get("args", {}).get("op_name", "?"))
        if calls and calls[-1][0] == layer and calls[-1][2] + calls[-1][3] <= event["ts"] + 1:
            calls[-1][3] = event["ts"] + event["dur"] - calls[-1][2]
            calls[-1][1] = f"{calls[-1][1]}+{op}" if op not in calls[-1][1] else calls[-1][1]
        else:
            calls.append([layer, op, float(event["ts"]), float(event["dur"])])
    return [tuple(call) for call in calls]  # type: ignore[misc]


def measure_layers(bundle: Any, samples: Sequence[Any], *,
                   threads: int | None = None) -> tuple[list[LayerProfile], LayerPass]:
    """Run ``samples`` (the run's input arrays) through the bundle's ONNX model with onnxruntime's
    profiler on, and return each layer's kernel time.

    Args:
        bundle: the agent's `afrt.LoadedBundle` (``agent.bundle``).
        samples: float32 arrays ``[n, input_size]`` as the run's backend calls had them.
        threads: the run's onnxruntime threads (None: as the agent's limits say).

    Returns:
        One `LayerProfile` per layer, in order, and the `LayerPass` (its ``call_seconds`` are onnxruntime's
        ``model_run`` events); no layers without samples.
    """
    import afrt

    if not samples:
        return [], LayerPass("onnxruntime-profiler", reason="no records ran")
    agent = afrt.load(bundle, backend="onnx", profile_layers=True, threads=threads)
    try:
        agent.infer(samples[0])  # the first call of a session is slower: not one of the measured
        made = 0
        while made < LAYER_PASS_CALLS:
            for array in samples:
                agent.infer(array)
                made += 1
        _, events = agent.layer_events()
    finally:
        agent.close()
    sizes = [len(a) for a in samples]
    per_layer: dict[int, list[tuple[str, float, int]]] = {}
    grouped = layer_calls(events)
    layers = max((call[0] for call in grouped), default=-1) + 1
    calls_per_layer: dict[int, int] = {}
    sums: dict[int, float] = {}  # call index -> its layers' seconds
    for layer, op, _, duration in grouped:
        index = calls_per_layer.get(layer, 0)
        calls_per_layer[layer] = index + 1
        records = sizes[(index - 1) % len(sizes)] if index else sizes[0]  # call 0 is the warm-up
        if index:
            per_layer.setdefault(layer, []).append((op, duration / 1e6, records))
            sums[index] = sums.get(index, 0.0) + duration / 1e6
    runs = [e["dur"] / 1e6 for e in events if e.get("name") == "model_run"][1:]
    profiles = [LayerProfile(layer, per_layer[layer][0][0], len(per_layer[layer]),
                             Distribution.of([s for _, s, _ in per_layer[layer]]),
                             Distribution.of([s / n for _, s, n in per_layer[layer]]))
                for layer in range(layers) if layer in per_layer]
    return profiles, LayerPass("onnxruntime-profiler", calls=made, call_seconds=Distribution.of(runs) if runs else None,
                               layers_seconds=Distribution.of(list(sums.values())))


def measure_wasm_layers(bundle: Any, samples: Sequence[Any], *, fuel_per_record: int | None = None,
                        clock: Callable[[], float] = time.perf_counter) -> tuple[list[LayerProfile], LayerPass]:
    """Run ``samples`` (the run's input arrays) through a fresh instance of the bundle's wasm module one stage
    at a time, timing each stage's call, and return each layer's time and fuel.

    Each sample is loaded and run stage by stage, then through a call that does nothing (``stage`` with an
    index past the last: what timing a call costs, the clock and the host call included), then loaded again
    and run whole (``infer``); every time is taken right around one call, less the median cost of the call
    that does nothing.
    The stages call the very functions ``infer`` calls, on the same memory (docs/bundle.md), and their
    outputs are checked bit for bit against ``infer``'s.

    Args:
        bundle: the agent's `afrt.LoadedBundle` (``agent.bundle``).
        samples: float32 arrays ``[n, input_size]`` as the run's backend calls had them.
        fuel_per_record: the run's fuel budget per record (None: the default), so that the calls have the
            run's limits.
        clock: the time source in seconds.

    Returns:
        One `LayerProfile` per layer, in order, and the `LayerPass` (empty without samples).

    Raises:
        AfError: AF5500 for a module without per-stage exports (`afrt.Agent.stages` says why), AF5503 when the
            stages do not compute what ``infer`` computes, or a fuel, memory or trap error of a call.
    """
    import afrt

    if not samples:
        return [], LayerPass("wasm-stages", reason="no records ran")
    agent = afrt.load(bundle, backend="wasm", fuel_per_record=fuel_per_record)
    try:
        stages = agent.stages()
        try:
            _time_call(stages, samples[0], clock)  # the first calls are slower: not measured
            rows = []
            while len(rows) < LAYER_PASS_CALLS:
                rows += [(len(array), _time_call(stages, array, clock)) for array in samples]
        finally:
            stages.close()
    finally:
        agent.close()
    return _wasm_profiles(bundle, rows)


def _time_call(stages: Any, array: Any, clock: Callable[[], float]) -> tuple[float, float, list[tuple[float, int]]]:
    """Time each stage, a call that does nothing and the whole call on ``array``: (nothing, whole, [(stage
    seconds, stage fuel)]). The call that does nothing comes right after the last stage, as each stage
    comes right after another: what timing costs is measured where the stages were timed."""
    import numpy as np

    stages.load(array)
    times, used = [], 0
    for index in range(stages.count):
        started = clock()
        stages.run(index)
        ended = clock()
        fuel = stages.fuel_used()
        times.append((ended - started, fuel - used))
        used = fuel
    started = clock()
    stages.nothing()
    nothing = clock() - started
    staged = stages.outputs()
    stages.load(array)
    started = clock()
    stages.infer()
    whole = clock() - started
    if not np.array_equal(staged.view(np.uint32), stages.outputs().view(np.uint32)):
        from afcore.errors import BundleError

        raise BundleError("per-layer time is not available: running the module's stages in turn does not "
                          "give infer's outputs", code="AF5503",
                          hint="the bundle's model.wasm is not one `af compile` made; recompile it")
    return nothing, whole, times


def _wasm_profiles(bundle: Any, rows: list[tuple[int, tuple[float, float, list[tuple[float, int]]]]]
                   ) -> tuple[list[LayerProfile], LayerPass]:
    """Subtract the median cost of timing a call from every time, and summarise per stage."""
    import numpy as np

    timer = float(np.median([nothing for _, (nothing, _, _) in rows]))
    calls = len(rows)
    per_stage: list[list[tuple[float, int, int]]] = [[] for _ in rows[0][1][2]]  # (seconds, fuel, records)
    for n, (_, _, times) in rows:
        for index, (seconds, fuel) in enumerate(times):
            per_stage[index].append((max(seconds - timer, 0.0), fuel, n))

    def profile(index: int) -> tuple[Distribution, Distribution, Distribution]:
        values = per_stage[index]
        return (Distribution.of([s for s, _, _ in values]), Distribution.of([s / n for s, _, n in values]),
                Distribution.of([f / n for _, f, n in values]))

    activations = [layer.get("activation", "?") for layer in bundle.manifest["network"]["layers"]]
    layers = []
    for layer in range(len(per_stage) - 2):
        seconds, per_record, fuel = profile(layer + 1)
        layers.append(LayerProfile(layer, f"dense+{activations[layer]}" if layer < len(activations) else "dense",
                                   calls, seconds, per_record, fuel))
    others = [StageProfile(name, calls, *profile(index)[::2]) for name, index in (("input", 0), ("output", -1))]
    return layers, LayerPass(
        "wasm-stages", calls=calls,
        call_seconds=Distribution.of([max(whole - timer, 0.0) for _, (_, whole, _) in rows]),
        layers_seconds=Distribution.of([sum(max(s - timer, 0.0) for s, _ in times) for _, (_, _, times) in rows]),
        timer_seconds=timer, stages=others)
