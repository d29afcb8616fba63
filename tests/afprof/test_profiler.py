"""The profiler: hook bookkeeping on a scripted clock, and a real run checked against independent references."""

from __future__ import annotations

import asyncio
import io
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

import afrt
from afcore.errors import AgentTrap
from afcore.steps import Step
from afprof import Distribution, Profiler
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"
#: the four XOR inputs, cycled
CORNERS = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]


class Clock:
    """A clock that advances by the given step at each reading."""

    def __init__(self, step: float = 1.0) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _record(seq: int) -> SimpleNamespace:
    return SimpleNamespace(record=SimpleNamespace(seq=seq, id=seq))


def _step(name: str, line: int) -> Step:
    return Step(name, span={"path": "a.af", "line": line, "column": 7})


class TestDistribution:
    def test_matches_the_statistics_module(self):
        values = [float(v) for v in range(1, 21)]
        d = Distribution.of(values)
        assert d.count == 20 and d.total == sum(values) and d.mean == statistics.fmean(values)
        assert d.p50 == statistics.median(values)
        # the "inclusive" method is linear interpolation between the closest ranks (numpy's default)
        assert d.p95 == pytest.approx(statistics.quantiles(values, n=20, method="inclusive")[-1])
        assert d.max == 20.0

    def test_empty(self):
        d = Distribution.of([])
        assert (d.count, d.total, d.mean, d.p50, d.p95, d.max) == (0, 0.0, None, None, None, None)


class TestHooks:
    def test_step_times_skips_and_runs(self):
        profiler = Profiler(clock=Clock(1.0))
        ctx = SimpleNamespace(agent=object())
        recv, send = _step("receive_input", 10), _step("send_output", 11)
        for seq in range(3):
            rec = _record(seq)
            profiler.before_step(ctx, "execution", recv, rec)  # t
            profiler.after_step(ctx, "execution", recv, rec)  # t + 1
            profiler.before_step(ctx, "execution", send, rec)
            if seq != 1:  # record 1: the guard was false, so no after_step
                profiler.after_step(ctx, "execution", send, rec)
        report = profiler.report()
        by_name = {s.step: s for s in report.steps}
        assert [s.step for s in report.steps] == ["receive_input", "send_output"]  # declared (line) order
        assert (by_name["receive_input"].calls, by_name["receive_input"].skipped) == (3, 0)
        assert (by_name["send_output"].calls, by_name["send_output"].skipped) == (2, 1)
        assert by_name["send_output"].seconds.mean == 1.0 and by_name["send_output"].line == 11
        (execution,) = report.workflows
        assert execution.runs == 3
        # a run lasts from its first before_step to its last hook: 3 ticks, or 2 when its last step was skipped
        assert execution.seconds.total == 3 + 2 + 3

    def test_traps_counted_once_per_error_and_close_the_step(self):
        profiler = Profiler(clock=Clock())
        ctx = SimpleNamespace(agent=object())
        step = _step("process_neural_network", 5)
        error = AgentTrap("out of fuel", code="AF5010")
        profiler.trap(ctx, error)  # the batch retried record by record
        profiler.before_step(ctx, "execution", step, _record(0))
        profiler.trap(ctx, error)  # the step re-raises the same error
        profiler.trap(ctx, AgentTrap("trap", code="AF5001"))
        report = profiler.report()
        assert report.traps == {"AF5010": 1, "AF5001": 1}
        (stats,) = report.steps
        assert (stats.calls, stats.skipped, stats.traps) == (0, 0, 1)

    def test_messages_per_topic(self):
        profiler = Profiler()
        ctx = SimpleNamespace(agent=object())
        for topic in ("task.completion", "agent.lifecycle", "task.completion"):
            profiler.message_sent(ctx, SimpleNamespace(topic=topic))
        assert profiler.report().messages == {"agent.lifecycle": 1, "task.completion": 2}


def _xor_source(guarded: bool) -> bytes:
    """Compile examples/xor.af (optionally with a guard on send_output) in memory."""
    import tempfile

    from afc import load_agent_file
    from afc.compile import compile_agent

    text = XOR.read_text()
    if guarded:
        text = text.replace("    - send_output\n", "    - send_output when output.max > 0.5\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "xor.af"
        path.write_text(text)
        return compile_agent(load_agent_file(path).spec(), targets=("onnx", "wasm"))


def _xor_reference(x: np.ndarray) -> np.ndarray:
    """float64 forward pass of the example: tanh hidden layer, sigmoid output."""
    from afc import load_agent_file

    return forward64(load_agent_file(XOR).spec().network, x)


def _fuel_reference(wasm: bytes, x: np.ndarray) -> list[int]:
    """Fuel of one-record calls measured with wasmtime directly (a fuel-metered Store per call)."""
    import wasmtime

    config = wasmtime.Config()
    config.consume_fuel = True
    engine = wasmtime.Engine(config)
    module = wasmtime.Module(engine, wasm)
    fuel = []
    for row in x:
        store = wasmtime.Store(engine)
        store.set_fuel(10**9)
        exports = wasmtime.Instance(store, module, []).exports(store)
        exports["memory"].write(store, np.ascontiguousarray(row, dtype="<f4").tobytes(), exports["input_ptr"](store))
        before = store.get_fuel()
        assert exports["infer"](store, 1) == 0
        fuel.append(before - store.get_fuel())
    return fuel


def _profile(data: bytes, backend: str, x: np.ndarray, max_batch: int) -> tuple:
    agent = afrt.load(data, backend=backend)
    profiler = Profiler()
    source = io.BytesIO(b"".join(orjson.dumps({"id": i, "input": row.tolist()}) + b"\n" for i, row in enumerate(x)))
    sink = io.BytesIO()
    options = afrt.RunOptions(instrument=profiler, max_batch=max_batch)
    summary = asyncio.run(afrt.run_jsonl(profiler.wrap(agent), source, sink, options))
    return profiler.report(summary), [orjson.loads(line) for line in sink.getvalue().splitlines()], agent


class TestProfiledRun:
    def test_guarded_send_output_counts_against_the_reference(self):
        x = np.array([CORNERS[i % 4] for i in range(40)], dtype=np.float32)
        report, records, _ = _profile(_xor_source(guarded=True), "onnx", x, max_batch=8)
        sent = int((_xor_reference(x).max(axis=1) > 0.5).sum())
        assert 0 < sent < 40
        steps = {s.step: s for s in report.steps if s.workflow == "execution"}
        assert steps["receive_input"].calls == 40 and steps["process_neural_network"].calls == 40
        assert (steps["send_output"].calls, steps["send_output"].skipped) == (sent, 40 - sent)
        # The results of one backend batch (at most 8 records here) travel in one message.
        assert -(-sent // 8) <= report.messages["task.completion"] <= 40 // 8
        assert sum("output" in r for r in records) == sent
        assert report.records == 40 and report.records_per_second > 0
        # backend time: every record charged once, warm-up apart; 40 records in batches of at most 8
        assert report.backend_seconds_per_record.count == 40 and report.warmup_calls == 1
        assert 5 <= report.backend_calls <= 40
        assert [w.workflow for w in report.workflows] == ["initialization", "execution", "shutdown"]
        assert report.fuel_per_record is None

    def test_wasm_fuel_per_record_matches_wasmtime(self):
        x = np.array(CORNERS * 2, dtype=np.float32)
        data = _xor_source(guarded=False)
        report, records, agent = _profile(data, "wasm", x, max_batch=1)
        outputs = np.array([r["output"] for r in records], dtype=np.float64)
        np.testing.assert_allclose(outputs, _xor_reference(x), rtol=1e-5, atol=1e-6)
        expected = _fuel_reference(agent.bundle.member("wasm"), x)
        assert report.fuel_per_record.count == len(x)
        assert report.fuel_per_record.total == sum(expected)
        assert report.fuel_per_record.max == max(expected)
        assert report.fuel_budget == afrt.load(data, backend="wasm").fuel_per_record > max(expected)
        assert report.to_json()["fuel_per_record"]["count"] == len(x)
