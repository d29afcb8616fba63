"""Time per network layer, from onnxruntime's own profiler, measured so that it distorts nothing.

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
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .report import Distribution

__all__ = ["LayerProfile", "LAYER_SAMPLE_BLOCKS", "layer_calls", "measure_layers"]

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

    def to_json(self) -> dict[str, Any]:
        """Return the layer's profile as plain JSON data."""
        return {"layer": self.layer, "ops": self.ops, "calls": self.calls, "seconds": self.seconds.to_json(),
                "per_record": self.per_record.to_json()}


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


def measure_layers(bundle: Any, samples: Sequence[Any], *, threads: int | None = None) -> list[LayerProfile]:
    """Run ``samples`` (the run's input arrays) through the bundle's ONNX model with onnxruntime's
    profiler on, and return each layer's kernel time.

    Args:
        bundle: the agent's `afrt.LoadedBundle` (``agent.bundle``).
        samples: float32 arrays ``[n, input_size]`` as the run's backend calls had them.
        threads: the run's onnxruntime threads (None: as the agent's limits say).

    Returns:
        One `LayerProfile` per layer, in order; empty without samples.
    """
    import afrt

    if not samples:
        return []
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
    for layer, op, _, duration in grouped:
        index = calls_per_layer.get(layer, 0)
        calls_per_layer[layer] = index + 1
        records = sizes[(index - 1) % len(sizes)] if index else sizes[0]  # call 0 is the warm-up
        if index:
            per_layer.setdefault(layer, []).append((op, duration / 1e6, records))
    return [LayerProfile(layer, per_layer[layer][0][0], len(per_layer[layer]),
                         Distribution.of([s for _, s, _ in per_layer[layer]]),
                         Distribution.of([s / n for _, s, n in per_layer[layer]]))
            for layer in range(layers) if layer in per_layer]
