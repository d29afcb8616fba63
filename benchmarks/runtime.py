"""Runtime benchmarks of issue 4, measured side by side in one run, each next to its target.

(1) `af run` records/s against a bare onnxruntime script (benchmarks/run_throughput.py, best of 5)  target >= 0.8x
(2) `Agent.infer` on 64 x 784 against the bare `InferenceSession.run`                  target >= 0.95x
(3) batch-1 overhead per record of `Agent.infer` over the bare backend call, both backends  target <= 50 us
(4) RSS of 1,000 wasm replicas of the reference agent in one process (a subprocess)       target <= 200 MB

The reference agent is examples/classification-agent.af (784-128-64-32-10, relu), compiled with
`af compile` into a temporary directory. Run: ``.venv/bin/python benchmarks/runtime.py``.
Timings alternate between the two sides in rounds and report medians, so that drift on this
shared 2-core machine hits both sides alike.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "classification-agent.af"
#: rounds of alternating measurements, and calls per round
ROUNDS, CALLS = 15, 400


def compile_reference(out_dir: Path) -> Path:
    """Compile the reference example with the `af` command (a subprocess, as a user would)."""
    bundle = out_dir / "classification-agent.afb"
    af = Path(sys.executable).parent / "af"
    subprocess.run([str(af), "compile", str(EXAMPLE), "-o", str(bundle)], check=True, capture_output=True)
    return bundle


def per_call_us(fn: Callable[[], object], calls: int = CALLS) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls / 1e3


def side_by_side(a: Callable[[], object], b: Callable[[], object], calls: int = CALLS) -> tuple[float, float]:
    """Median microseconds per call of ``a`` and ``b``, measured in alternating rounds."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(ROUNDS):
        times_a.append(per_call_us(a, calls))
        times_b.append(per_call_us(b, calls))
    return statistics.median(times_a), statistics.median(times_b)


def bare_session(bundle: Path):
    """The bare onnxruntime session a user would write, with the agent's settings (1 thread, sequential)."""
    import onnxruntime as ort

    from afcore.bundle import read_bundle

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    model = read_bundle(bundle).members["model.onnx"]
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def bare_wasm_call(bundle: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The bare wasm call: write the input through a numpy view, call `infer` via FastFunc, copy the output."""
    import wasmtime

    from afcore.bundle import read_bundle
    from afrt._fastcall import FastFunc, memory_view

    config = wasmtime.Config()
    config.consume_fuel = True  # as the agent: metering is part of the sandboxed kernel's cost
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    store.set_fuel(2**62)
    module = wasmtime.Module(engine, read_bundle(bundle).members["model.wasm"])
    exports = wasmtime.Instance(store, module, []).exports(store)
    memory, infer = exports["memory"], FastFunc(store, exports["infer"])
    view_in = memory_view(store, memory, exports["input_ptr"](store), 784)
    view_out = memory_view(store, memory, exports["output_ptr"](store), 10)

    def call(x: np.ndarray) -> np.ndarray:
        view_in[:] = x.ravel()
        infer(1)
        return view_out.copy()

    return call


def measure_infer_64(bundle: Path) -> None:
    import afrt

    agent = afrt.load(bundle, backend="onnx")
    session = bare_session(bundle)
    x = np.random.default_rng(0).random((64, 784), dtype=np.float32)
    np.testing.assert_allclose(agent.infer(x), session.run(None, {"input": x})[0], rtol=1e-6)
    t_agent, t_bare = side_by_side(lambda: agent.infer(x), lambda: session.run(None, {"input": x}), calls=100)
    ratio = t_bare / t_agent
    print(f"(2) infer 64x784, onnx      agent {t_agent:8.1f} us   bare session.run {t_bare:8.1f} us   "
          f"ratio {ratio:.3f}x   target >= 0.95x   {'OK' if ratio >= 0.95 else 'MISSED'}")


def measure_overhead_batch1(bundle: Path, cache_dir: Path) -> None:
    import afrt

    x = np.random.default_rng(1).random((1, 784), dtype=np.float32)
    session = bare_session(bundle)
    onnx_agent = afrt.load(bundle, backend="onnx")
    wasm_agent = afrt.load(bundle, backend="wasm", cache_dir=cache_dir)
    wasm_bare = bare_wasm_call(bundle)
    np.testing.assert_allclose(wasm_agent.infer(x)[0], wasm_bare(x), rtol=1e-6)
    for name, agent_call, bare_call, bare_name in (
        ("onnx", lambda: onnx_agent.infer(x), lambda: session.run(None, {"input": x}), "session.run"),
        ("wasm", lambda: wasm_agent.infer(x), lambda: wasm_bare(x), "view+FastFunc"),
    ):
        t_agent, t_bare = side_by_side(agent_call, bare_call)
        overhead = t_agent - t_bare
        print(f"(3) batch-1 overhead, {name}  agent {t_agent:8.1f} us   bare {bare_name:13s} {t_bare:6.1f} us   "
              f"overhead {overhead:6.2f} us/record   target <= 50 us   {'OK' if overhead <= 50 else 'MISSED'}")


REPLICAS_SCRIPT = """
import json, sys
import numpy as np
import afrt

def memory_mb():
    found = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:"):
                found[parts[0][:-1].lower()] = int(parts[1]) / 1024
    return found

bundle, cache, count, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
first = afrt.load(bundle, backend="wasm", cache_dir=cache)
first.infer(x)
before = memory_mb()
if mode == "replicas":
    agents = [first] + [first.replica() for _ in range(count - 1)]
    for agent in agents:
        agent.infer(x)  # every replica has run once
    instances = first._engine.pool.created
else:  # all replicas inside a call at once: one live instance each, every one has run
    pool = first._engine.pool
    held = [pool.acquire() for _ in range(count)]
    for instance in held:
        instance.run(x)
    instances = pool.created
print(json.dumps({"before": before, "after": memory_mb(), "instances": instances}))
"""


def replicas_memory(bundle: Path, cache_dir: Path, count: int, mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", REPLICAS_SCRIPT, str(bundle), str(cache_dir), str(count), mode],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(result.stdout)


def measure_replicas(bundle: Path, cache_dir: Path, count: int = 1000) -> None:
    data = replicas_memory(bundle, cache_dir, count, "replicas")
    rss = data["after"]["rss"]
    print(f"(4) {count} wasm replicas, each ran once   process RSS {rss:6.1f} MB (one agent {data['before']['rss']:.1f} MB; "
          f"{data['instances']} instance(s) in the pool)   target <= 200 MB   {'OK' if rss <= 200 else 'MISSED'}")
    data = replicas_memory(bundle, cache_dir, count, "instances")
    rss, pss = data["after"]["rss"], data["after"]["pss"]
    extra = (pss - data["before"]["pss"]) / (count - 1) * 1024
    print(f"    worst case, {data['instances']} instances busy at once   RSS {rss:6.1f} MB   PSS {pss:6.1f} MB "
          f"(+{extra:.1f} KiB each: the weights are shared copy-on-write, but RSS counts each mapping)")


def measure_run_throughput(bundle: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from run_throughput import measure
    except ImportError:
        print("(1) af run throughput: benchmarks/run_throughput.py is not there yet")
        return
    r = measure(rounds=5)
    if {"bare_subprocess", "af_subprocess", "ratio_subprocess"} <= set(r):
        for where in ("inproc", "subprocess"):
            ratio = r[f"ratio_{where}"]
            print(f"(1) af run throughput, {where:10s} af run {r[f'af_{where}']:9.0f} rec/s   "
                  f"bare script {r[f'bare_{where}']:9.0f} rec/s   ratio {ratio:.2f}x   target >= 0.8x   "
                  f"{'OK' if ratio >= 0.8 else 'MISSED'}   (best rounds; median of paired rounds "
                  f"{r[f'median_ratio_{where}']:.2f}x)")
    else:
        print(f"(1) af run throughput: {r}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bundle = compile_reference(tmp_path)
        print(f"reference agent: {EXAMPLE.name} -> {bundle.stat().st_size:,} bytes (784-128-64-32-10 relu)")
        measure_run_throughput(bundle)
        measure_infer_64(bundle)
        measure_overhead_batch1(bundle, tmp_path / "modules")
        measure_replicas(bundle, tmp_path / "modules")


if __name__ == "__main__":
    main()
