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
    def test_step_times_skips_and_blocks(self):
        profiler = Profiler(clock=Clock(1.0))
        ctx = SimpleNamespace(agent=object())
        recv, send = _step("receive_input", 10), _step("send_output", 11)
        block = SimpleNamespace(seqs=[0, 1, 2, 3])
        profiler.block_start(ctx, block)  # t = 1
        profiler.step_timed(ctx, "execution", recv, 4, 0, 0, 2.0)  # one call over the block: 0.5 per record
        profiler.step_timed(ctx, "execution", send, 3, 1, 0, 1.5)
        profiler.block_end(ctx, [0, 1, 2, 3], None)  # t = 2
        report = profiler.report()
        by_name = {s.step: s for s in report.steps}
        assert [s.step for s in report.steps] == ["receive_input", "send_output"]  # declared (line) order
        assert (by_name["receive_input"].calls, by_name["receive_input"].skipped) == (4, 0)
        assert by_name["receive_input"].seconds.mean == 0.5 and by_name["receive_input"].seconds.total == 2.0
        assert (by_name["send_output"].calls, by_name["send_output"].skipped) == (3, 1)
        assert by_name["send_output"].line == 11
        (execution,) = report.workflows
        assert execution.runs == 4 and execution.seconds.total == 1.0  # the block lasted one tick

    def test_backend_time_shows_under_process_neural_network(self):
        profiler = Profiler()
        ctx = SimpleNamespace(agent=object())
        process = _step("process_neural_network", 12)
        profiler.backend_call(ctx, 2, 0.4, None)
        profiler.step_timed(ctx, "execution", process, 2, 0, 0, 0.2)
        report = profiler.report()
        (stats,) = report.steps
        assert stats.seconds.total == pytest.approx(0.6) and report.backend_seconds_per_record.total == 0.4

    def test_lifecycle_runs_and_warm_up(self):
        profiler = Profiler()
        a, b = SimpleNamespace(agent=object()), SimpleNamespace(agent=object())
        load, mem = _step("load_neural_network", 3), _step("initialize_memory", 4)
        for ctx in (a, b):
            profiler.step_timed(ctx, "initialization", load, 1, 0, 0, 1.0)
            profiler.step_timed(ctx, "initialization", mem, 1, 0, 0, 0.5)
        report = profiler.report()
        (init,) = report.workflows
        assert (init.runs, init.seconds.total) == (2, 3.0) and report.warmup_calls == 2

    def test_traps_counted_once_per_error_and_per_step(self):
        profiler = Profiler(clock=Clock())
        ctx = SimpleNamespace(agent=object())
        step = _step("process_neural_network", 5)
        error = AgentTrap("out of fuel", code="AF5010")
        profiler.trap(ctx, error)  # the batch retried record by record
        profiler.trap(ctx, error)  # the step re-raises the same error
        profiler.step_timed(ctx, "execution", step, 0, 0, 1, 0.0)
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

    def test_the_profiler_never_asks_for_per_step_hooks(self):
        # so that a profiled run takes the path `af run` takes
        from afrt import Instruments

        instruments = Instruments([Profiler()])
        assert not instruments.wants("before_step") and not instruments.wants("after_step")


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
    summary = asyncio.run(afrt.run_jsonl(agent, source, sink, afrt.RunOptions(instrument=profiler.watching(agent),
                                                                              max_batch=max_batch)))
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
        assert sum(r.get("filtered", {}).get("step") == "send_output when output.max > 0.5" for r in records) == 40 - sent
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


def test_a_profiled_run_takes_the_batched_path(monkeypatch):
    """The profile measures what `af run` runs: no per-record step call on an unguarded workflow."""
    import afrt.steps as impl

    def refuse(*args):
        raise AssertionError("a per-record step ran: the profiler forced the instrumented path")

    for name in impl.BATCH_STEPS:
        monkeypatch.setitem(impl.STEPS, name, refuse)
    x = np.array(CORNERS * 4, dtype=np.float32)
    report, records, _ = _profile(_xor_source(guarded=False), "onnx", x, max_batch=4)
    assert len(records) == 16 and all("output" in r for r in records)
    steps = {s.step: s for s in report.steps if s.workflow == "execution"}
    assert steps["send_output"].calls == 16 and report.backend_seconds_per_record.count == 16


class TestTrace:
    @pytest.mark.parametrize("guarded", [False, True], ids=["batched", "instrumented"])
    def test_spans_nest_per_replica(self, guarded):
        agent = afrt.load(_xor_source(guarded=guarded), backend="wasm")
        profiler = Profiler(trace=True)
        x = np.array(CORNERS * 10, dtype=np.float32)
        source = io.BytesIO(b"".join(orjson.dumps({"id": i, "input": row.tolist()}) + b"\n" for i, row in enumerate(x)))
        options = afrt.RunOptions(instrument=profiler.watching(agent), max_batch=8, replicas=2)
        asyncio.run(afrt.run_jsonl(agent, source, io.BytesIO(), options))
        trace = orjson.loads(orjson.dumps(profiler.trace_json()))  # it is plain JSON
        spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
        names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"}
        assert len(names) == 2 and all(n.startswith("xor") for n in names)  # one thread per replica
        for tid in {e["tid"] for e in spans}:
            _assert_nested(sorted((e for e in spans if e["tid"] == tid), key=lambda e: (e["ts"], -e["dur"])))
        kinds = {(e["cat"], e["name"]) for e in spans}
        assert {("workflow", "initialization"), ("workflow", "execution"), ("workflow", "shutdown"),
                ("backend", "backend (wasm)"), ("step", "process_neural_network")} <= kinds
        blocks = [e for e in spans if e["cat"] == "workflow" and e["name"] == "execution"]
        assert sum(e["args"]["records"] for e in blocks) == 40
        # every step and backend call of execution lies inside one of its replica's blocks
        for e in spans:
            if e["cat"] == "backend" or e["args"].get("workflow") == "execution":
                assert any(b["tid"] == e["tid"] and b["ts"] <= e["ts"] and e["ts"] + e["dur"] <= b["ts"] + b["dur"] + EPSILON_US
                           for b in blocks), e

    def test_no_trace_unless_asked(self):
        with pytest.raises(ValueError):
            Profiler().trace_json()


#: timestamps are written in µs with 3 decimals: sums of two may differ from the exact one by this
EPSILON_US = 0.002


def _assert_nested(spans: list[dict]) -> None:
    """Each span lies inside the span that encloses its start, or after it (a stack walk)."""
    stack: list[dict] = []
    for span in spans:
        while stack and stack[-1]["ts"] + stack[-1]["dur"] <= span["ts"] + EPSILON_US:
            stack.pop()
        if stack:
            parent = stack[-1]
            assert span["ts"] + span["dur"] <= parent["ts"] + parent["dur"] + EPSILON_US, (span, parent)
        stack.append(span)


class TestStagedCallsInTheTrace:
    """`Profiler.merge_staged_calls`: a wasm call's stages go inside the backend span of the call that ran them."""

    def _profiler(self):
        import time as _time

        profiler = Profiler(trace=True)  # perf_counter: the stages' own clock, so no conversion is needed
        return profiler, _time.perf_counter()

    def test_stages_reported_late_are_moved_inside_their_call(self):
        profiler, now = self._profiler()
        ctx = SimpleNamespace(agent_id="a-1")
        stages = tuple((now + 0.001 + k * 1e-5, now + 0.001 + (k + 1) * 1e-5, 100 * k) for k in range(4))
        # the runner reports the call 5 µs after its stages ended: the span is [start + 5 µs, end + 5 µs]
        ended = stages[-1][1] + 5e-6
        profiler.trace.span(ctx, "backend (wasm)", "backend", ended - 4.2e-5, ended, records=3)
        profiler.merge_staged_calls([SimpleNamespace(records=3, stages=stages)])
        events = profiler.trace_json()["traceEvents"]
        (call,) = [e for e in events if e.get("cat") == "backend"]
        layers = [e for e in events if e.get("cat") == "layer"]
        assert [e["name"] for e in layers] == ["input", "layer 0", "layer 1", "output"]
        assert all(e["tid"] == call["tid"] for e in layers)
        assert layers[0]["ts"] >= call["ts"] and layers[-1]["ts"] + layers[-1]["dur"] <= call["ts"] + call["dur"] + 0.002
        assert [e["dur"] for e in layers] == pytest.approx([10.0] * 4, abs=0.002)  # moved, never resized
        assert [e["args"]["fuel"] for e in layers] == [0, 100, 200, 300]

    def test_each_call_goes_to_its_own_span_and_others_to_a_thread_of_their_own(self):
        profiler, now = self._profiler()
        ctx = SimpleNamespace(agent_id="a-1")
        calls = []
        for i in range(3):
            start = now + 0.01 * (i + 1)
            stages = ((start, start + 1e-5, 1), (start + 1e-5, start + 3e-5, 2), (start + 3e-5, start + 4e-5, 3))
            calls.append(SimpleNamespace(records=1, stages=stages))
            if i:  # the first call (a warm-up) has no traced span
                profiler.trace.span(ctx, "backend (wasm)", "backend", start - 1e-6, start + 4.5e-5, records=1)
        profiler.merge_staged_calls(calls)
        events = profiler.trace_json()["traceEvents"]
        backend = [e for e in events if e.get("cat") == "backend"]
        layers = [e for e in events if e.get("cat") == "layer"]
        assert sum(e["tid"] == 0 for e in layers) == 3
        for call in backend:
            inside = [e for e in layers if e["tid"] == call["tid"] and call["ts"] <= e["ts"]
                      and e["ts"] + e["dur"] <= call["ts"] + call["dur"] + EPSILON_US]
            assert len(inside) == 3
