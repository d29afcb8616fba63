"""Compile and inference benchmarks, measured side by side in one run (see issue 3 for the targets).

Run: ``.venv/bin/python benchmarks/compile.py`` (about 30 s; ``--quick`` for a smaller 5M-parameter lowering).

Each measurement is one function returning rows of (name, value, unit, target text); ``main`` prints them.
- `measure_wasm_lowering`: MB of weights per second for `afc.lower_wasm.lower_network` on a 50M-parameter net.
- `measure_inference`: the WASM module of the reference 784-128-64-32-10 relu net against onnxruntime
  (1 thread, a Gemm model built here with onnx.helper from the same weights), batch 1 and 64, fuel off and on.
The full `af compile` measurements (example compile time, whole-compile throughput) belong to the compiler and
are added as further functions in `MEASUREMENTS`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afc.lower_wasm import lower_network  # noqa: E402
from afc.spec import LayerSpec, NetworkSpec  # noqa: E402

#: the reference network of docs and issue 3
REFERENCE_SIZES = (784, 128, 64, 32, 10)
Row = tuple[str, float, str, str]


def make_network(sizes, *, seed: int = 0, output: str = "softmax") -> NetworkSpec:
    """A random relu network with float32 weights."""
    rng = np.random.default_rng(seed)
    layers = []
    for index, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        weight = (rng.random((n_out, n_in), dtype=np.float32) - 0.5) * np.float32(2 / np.sqrt(n_in))
        bias = (rng.random(n_out, dtype=np.float32) - 0.5) * np.float32(0.1)
        layers.append(LayerSpec(index, weight, bias, output if index == len(sizes) - 2 else "relu"))
    return NetworkSpec(sizes[0], sizes[-1], tuple(layers), hidden_activation="relu", output_activation=output)


def measure_wasm_lowering(*, quick: bool = False) -> list[Row]:
    """Lowering throughput, MB of weights per second, for a 50M-parameter network (5M with ``quick``)."""
    sizes = (1600, 1600, 1600, 10) if quick else (5000, 5000, 5000, 10)
    network = make_network(sizes, output="linear")
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        module = lower_network(network, max_batch=64)
        best = min(best, time.perf_counter() - start)
    mb = network.weight_bytes / 1e6
    return [
        (f"wasm lowering, {network.parameters / 1e6:.1f}M params ({mb:.0f} MB)", best * 1e3, "ms", ""),
        ("wasm lowering throughput", mb / best, "MB/s", ">= 100 MB/s (whole compile)"),
        ("  module size", len(module.wasm) / 1e6, "MB", ""),
    ]


def _onnx_session(network: NetworkSpec):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, name = [], [], "input"
    for i, layer in enumerate(network.layers):
        inits += [numpy_helper.from_array(layer.weight, f"w{i}"), numpy_helper.from_array(layer.bias, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [name, f"w{i}", f"b{i}"], [f"z{i}"], transB=1))
        last = i == len(network.layers) - 1
        op = {"relu": "Relu", "softmax": "Softmax", "linear": "Identity"}[
            network.output_activation if last else network.hidden_activation]
        name = "output" if last else f"h{i}"
        nodes.append(helper.make_node(op, [f"z{i}"], [name], **({"axis": 1} if op == "Softmax" else {})))
    graph = helper.make_graph(
        nodes, "reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", network.input_size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", network.output_size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _WasmRunner:
    """The module behind the fast call path, as the runtime uses it: numpy views plus FastFunc."""

    def __init__(self, wasm: bytes, network: NetworkSpec, max_batch: int, *, fuel: bool) -> None:
        import wasmtime

        from afrt._fastcall import FastFunc, memory_view

        config = wasmtime.Config()
        config.consume_fuel = fuel
        engine = wasmtime.Engine(config)
        self.store = wasmtime.Store(engine)
        if fuel:
            self.store.set_fuel(2**62)
        exports = wasmtime.Instance(self.store, wasmtime.Module(engine, wasm), []).exports(self.store)
        memory = exports["memory"]
        n_in, n_out = network.input_size, network.output_size
        self.inp = memory_view(self.store, memory, exports["input_ptr"](self.store), max_batch * n_in)
        self.out = memory_view(self.store, memory, exports["output_ptr"](self.store), max_batch * n_out)
        self.infer = FastFunc(self.store, exports["infer"])
        self.n_in, self.n_out = n_in, n_out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        batch = len(x)
        self.inp[: batch * self.n_in] = x.ravel()
        if self.infer(batch):
            raise RuntimeError("infer refused the batch")
        return self.out[: batch * self.n_out].reshape(batch, self.n_out).copy()


def _time_per_call(fn: Callable[[], object], seconds: float) -> float:
    """Median seconds per call over rounds of calls lasting about ``seconds`` in total."""
    fn()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if time.perf_counter() - start > 0.02:
            break
        calls *= 2
    rounds = []
    for _ in range(max(3, int(seconds / 0.02))):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def measure_inference(*, seconds: float = 1.5) -> list[Row]:
    """WASM vs onnxruntime (1 thread) on the reference net, batch 1 and 64, fuel metering off and on."""
    network = make_network(REFERENCE_SIZES)
    wasm = lower_network(network, max_batch=64).wasm
    session = _onnx_session(network)
    plain, metered = (_WasmRunner(wasm, network, 64, fuel=f) for f in (False, True))
    rows: list[Row] = []
    for batch in (1, 64):
        x = np.random.default_rng(batch).standard_normal((batch, network.input_size)).astype(np.float32)
        np.testing.assert_allclose(plain(x), session.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5)
        t_ort, t_wasm, t_fuel = [], [], []
        for _ in range(5):  # interleaved so that drift (other jobs on the machine) hits all three alike
            t_ort.append(_time_per_call(lambda: session.run(None, {"input": x}), seconds / 15))
            t_wasm.append(_time_per_call(lambda: plain(x), seconds / 15))
            t_fuel.append(_time_per_call(lambda: metered(x), seconds / 15))
        ort_s, wasm_s, fuel_s = min(t_ort), min(t_wasm), min(t_fuel)
        rows += [
            (f"batch {batch}: onnxruntime 1 thread", ort_s * 1e6, "us/call", f"{batch / ort_s:,.0f} samples/s"),
            (f"batch {batch}: wasm", wasm_s * 1e6, "us/call", f"{batch / wasm_s:,.0f} samples/s"),
            (f"batch {batch}: wasm, fuel metered", fuel_s * 1e6, "us/call", f"{batch / fuel_s:,.0f} samples/s"),
        ]
        if batch == 1:
            rows.append(("batch 1: wasm latency / onnxruntime", wasm_s / ort_s, "x", "target <= 1.2"))
        else:
            rows.append(("batch 64: wasm throughput / onnxruntime", ort_s / wasm_s, "x", "target >= 0.2"))
        rows.append((f"batch {batch}: metered / unmetered time", fuel_s / wasm_s, "x", "target <= 1.15"))
    return rows + _call_overhead_rows(wasm)


def _call_overhead_rows(wasm: bytes) -> list[Row]:
    """The host -> wasm call alone: `infer(0)` returns at once, through FastFunc and through Func.__call__."""
    import wasmtime

    from afrt._fastcall import FastFunc

    store = wasmtime.Store()
    infer = wasmtime.Instance(store, wasmtime.Module(store.engine, wasm), []).exports(store)["infer"]
    fast = FastFunc(store, infer)
    t_fast = min(_time_per_call(lambda: fast(0), 0.1) for _ in range(3))
    t_func = min(_time_per_call(lambda: infer(store, 0), 0.1) for _ in range(3))
    return [
        ("call overhead: FastFunc", t_fast * 1e6, "us/call", "baseline: Func.__call__ below"),
        ("call overhead: wasmtime Func.__call__", t_func * 1e6, "us/call", f"{t_func / t_fast:.1f}x FastFunc"),
    ]


#: every measurement, in the order printed; the compiler's full-compile measurements are appended here
MEASUREMENTS: list[Callable[..., list[Row]]] = [measure_wasm_lowering, measure_inference]


def main() -> None:
    """Run every measurement and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 5M-parameter lowering instead of 50M")
    args = parser.parse_args()
    rows = measure_wasm_lowering(quick=args.quick) + measure_inference()
    rows += [row for measure in MEASUREMENTS[2:] for row in measure(quick=args.quick)]
    width = max(len(r[0]) for r in rows)
    for name, value, unit, note in rows:
        print(f"{name:<{width}}  {value:>12,.3f} {unit:<8} {note}")



# ---- whole `af compile` (compiler engineer): appended to MEASUREMENTS ----

_BENCH_HEADER = """\
version: "1.0"
name: "bench"
neural_config:
  network_type: "feedforward"
  input_size: {n_in}
  output_size: {n_out}
  hidden_layers: {hidden}
  activation_function: "relu"
workflows:
  initialization: [load_neural_network]
  execution: [receive_input, process_neural_network, send_output]
  shutdown: [cleanup_resources]
"""


def _best_of(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_example_compile(*, quick: bool = False) -> list[Row]:
    """`compile_file` on examples/classification-agent.af, beside loading (validating) the same file."""
    import tempfile

    import afc
    from afc.compile import compile_file

    source = Path(__file__).resolve().parents[1] / "examples" / "classification-agent.af"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "agent.afb"
        t_compile = _best_of(lambda: compile_file(source, output=out), 3 if quick else 7)
        t_load = _best_of(lambda: afc.load_agent_file(source), 3 if quick else 7)
    return [
        ("example: load + validate classification-agent.af", t_load * 1e3, "ms", "baseline"),
        ("example: af compile classification-agent.af", t_compile * 1e3, "ms", "onnx + wasm + bundle"),
        ("example: compile / load", t_compile / t_load, "x", ""),
    ]


def _bench_source(directory: Path, sizes) -> tuple[Path, NetworkSpec, bytes]:
    """Write the 50M-parameter (5M with quick) .af with a raw weights section; return it, its network and weights."""
    from afc.tensors import encode_tensors
    from afc.writer import write_container

    network = make_network(sizes, output="linear")
    tensors = {}
    for layer in network.layers:
        tensors[f"layers.{layer.index}.weight"], tensors[f"layers.{layer.index}.bias"] = layer.weight, layer.bias
    payload = encode_tensors(tensors)
    header = _BENCH_HEADER.format(n_in=sizes[0], n_out=sizes[-1], hidden=list(sizes[1:-1]))
    source = directory / "bench.af"
    source.write_bytes(write_container(header, [("neural_weights", payload)], raw=True))
    return source, network, payload


def _cpu() -> tuple[float, float]:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _compile_stages(source: Path, out: Path) -> list[tuple[str, float, float, float]]:
    """One `compile_file`, stage by stage as it runs them: (stage, wall s, user s, system s)."""
    import afc
    from afc.compile import lower_agent, write_bundle_file

    stages, spec, lowered = [], None, None

    def load():
        nonlocal spec
        spec = afc.load_agent_file(source).spec()

    def lower():
        nonlocal lowered
        lowered = lower_agent(spec)

    for name, run in (("load", load), ("lower", lower), ("write", lambda: write_bundle_file(out, spec, lowered))):
        (user, system), start = _cpu(), time.perf_counter()
        run()
        (user_end, system_end), wall = _cpu(), time.perf_counter() - start
        stages.append((name, wall, user_end - user, system_end - system))
    return stages


#: what each stage of `_compile_stages` does, for the table
_STAGE_TEXT = {
    "load": "read .af, sha256, zstd-decode section, safetensors, checks, spec",
    "lower": "ONNX (+check_model) beside WASM (pack+validate), member sha256s, in threads",
    "write": "tar + zstd (2 workers) -> file, bundle sha256, fsync, rename",
}


def measure_full_compile(*, quick: bool = False) -> list[Row]:
    """Whole `compile_file` throughput (MB of weights/s) on a 50M-parameter .af, beside bare zstd level 3.

    Three compiles, stage by stage (the stages are what `compile_file` runs); the best and the median
    total are printed, with each stage's wall, user and system time in the best run. System time is
    page faults and page cache: on a VM it varies from run to run with the other jobs on the machine.
    """
    import tempfile

    import zstandard

    sizes = (1600, 1600, 1600, 10) if quick else (5000, 5000, 5000, 10)
    with tempfile.TemporaryDirectory() as tmp:
        source, network, payload = _bench_source(Path(tmp), sizes)
        out = Path(tmp) / "bench.afb"
        runs = [_compile_stages(source, out) for _ in range(3)]
        size = out.stat().st_size
    t_zstd = _best_of(lambda: zstandard.ZstdCompressor(level=3).compress(payload), 2)
    totals = [sum(stage[1] for stage in run) for run in runs]
    best = runs[totals.index(min(totals))]
    mb = network.weight_bytes / 1e6
    rows: list[Row] = [
        (f"full compile, {network.parameters / 1e6:.1f}M params ({mb:.0f} MB), raw .af", min(totals) * 1e3, "ms",
         f"bundle {size / 1e6:.0f} MB; median of 3 {statistics.median(totals) * 1e3:,.0f} ms"),
        ("full compile throughput", mb / min(totals), "MB/s",
         f"target >= 100 MB/s; median {mb / statistics.median(totals):.0f} MB/s"),
    ]
    rows += [(f"  stage {name}: {_STAGE_TEXT[name]}", wall * 1e3, "ms", f"user {user * 1e3:,.0f} ms, sys {system * 1e3:,.0f} ms")
             for name, wall, user, system in best]
    rows += [
        ("bare zstd level 3 of the weights (baseline)", mb / t_zstd, "MB/s", "1 thread, one copy of the weights"),
        ("full compile / bare zstd level 3", t_zstd / min(totals), "x", ""),
    ]
    return rows


MEASUREMENTS += [measure_example_compile, measure_full_compile]

if __name__ == "__main__":
    main()
