"""Per-layer timing on wasm: what measuring per layer costs, and how close the layers add up to the call.

Run: ``.venv/bin/python benchmarks/wasm_layers.py`` (about 20 s). Everything is measured side by side in one
run, on the example network (examples/classification-agent.af, 784-128-64-32-10 relu), batch 1 and 64:

- `measure_staged_run`: a plain wasm backend call (``afrt.load``) against the same call run stage by stage
  and recorded (``afrt.load(..., profile_layers=True)``, what ``af profile --trace`` runs), in alternating
  rounds: the cost of measuring per layer inside the run, per call and as a ratio.
- `measure_layer_pass`: the separate pass ``af profile`` makes after the run (`afprof.layers.measure_wasm_layers`):
  each layer's and stage's time (less the cost of timing a call) summed per call, against the whole ``infer``
  call timed the same way in the same pass; and how long the pass takes.
- `measure_run_against_pass`: the run's own backend calls (``af profile``'s ``backend_seconds_per_record``)
  against the pass's sum of layers: what a layer row means for the run.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import afrt  # noqa: E402
from afc import load_agent_file  # noqa: E402
from afc.compile import compile_agent  # noqa: E402
from afprof import Profiler  # noqa: E402
from afprof.layers import measure_wasm_layers  # noqa: E402

ROUNDS = 7


def _bundle() -> bytes:
    return compile_agent(load_agent_file(ROOT / "examples" / "classification-agent.af").spec(), targets=("wasm",))


def _per_call(agent: afrt.Agent, x: np.ndarray, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        agent.infer(x)
    return (time.perf_counter() - started) / calls


def measure_staged_run(data: bytes) -> None:
    plain = afrt.load(data, backend="wasm")
    staged = afrt.load(data, backend="wasm", profile_layers=True)
    rng = np.random.default_rng(0)
    for batch, calls in ((1, 2000), (64, 200)):
        x = rng.random((batch, 784), dtype=np.float32)
        a, b = [], []
        for _ in range(ROUNDS):
            a.append(_per_call(plain, x, calls))
            b.append(_per_call(staged, x, calls))
        pa, pb = min(a), min(b)
        print(f"batch {batch:3}: plain {pa * 1e6:8.1f} µs/call, stage by stage and recorded {pb * 1e6:8.1f} µs/call: "
              f"+{(pb - pa) * 1e6:.1f} µs, {pb / pa:.2f}x (best of {ROUNDS} x {calls} calls)")


def measure_layer_pass(data: bytes) -> None:
    bundle = afrt.load_bundle(data)
    rng = np.random.default_rng(1)
    for batch in (1, 64):
        samples = [rng.random((batch, 784), dtype=np.float32) for _ in range(32)]
        ratios, spent = [], []
        for _ in range(ROUNDS):
            started = time.perf_counter()
            layers, layer_pass = measure_wasm_layers(bundle, samples)
            spent.append(time.perf_counter() - started)
            ratios.append(layer_pass.layers_seconds.p50 / layer_pass.call_seconds.p50)
        parts = " + ".join(f"{layer.seconds.p50 * 1e6:.1f}" for layer in layers)
        print(f"batch {batch:3}: layers p50 {parts} µs; sum of stages / whole call (p50) over {ROUNDS} passes: "
              f"median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; "
              f"timing a call costs {layer_pass.timer_seconds * 1e6:.2f} µs; a pass takes "
              f"{statistics.median(spent) * 1e3:.0f} ms")


def measure_run_against_pass(data: bytes) -> None:
    rows = (ROOT / "examples" / "classification-inputs.jsonl").read_bytes()
    for _ in range(3):
        agent = afrt.load(data, backend="wasm")
        profiler = Profiler()
        summary = asyncio.run(afrt.run_jsonl(agent, io.BytesIO(rows * 4), io.BytesIO(),
                                             afrt.RunOptions(instrument=profiler.watching(agent), max_batch=64)))
        profiler.measure_layers(agent)
        report = profiler.report(summary)
        per_call = sorted(seconds for n, seconds, _ in profiler._calls if n == 64)
        run_p50 = statistics.median(per_call)
        layers = report.layer_pass.layers_seconds.p50
        print(f"run's backend call at batch 64 p50 {run_p50 * 1e6:.1f} µs ({len(per_call)} calls); layers summed "
              f"in the pass p50 {layers * 1e6:.1f} µs: {layers / run_p50:.3f} of the run's call")


def main() -> None:
    data = _bundle()
    print("== the cost of measuring per layer inside the run (af profile --trace on wasm)")
    measure_staged_run(data)
    print("== the separate pass: the layers against the whole call")
    measure_layer_pass(data)
    print("== the run's backend calls against the pass")
    measure_run_against_pass(data)


if __name__ == "__main__":
    main()
