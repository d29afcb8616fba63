"""`af profile` through the CLI: the JSON report, the table, --output and the usage errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import orjson
from click.testing import CliRunner

from af.cli import app
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 5, dtype=np.float32)


def xor_reference(x: np.ndarray) -> np.ndarray:
    """float64 forward pass of the example: tanh hidden layer, sigmoid output."""
    from afc import load_agent_file

    return forward64(load_agent_file(XOR).spec().network, x)


def write_inputs(path: Path, x: np.ndarray) -> Path:
    path.write_bytes(b"".join(orjson.dumps({"id": i, "input": row.tolist()}) + b"\n" for i, row in enumerate(x)))
    return path


def profile(*args):
    return CliRunner().invoke(app, ["profile", *map(str, args)])


class TestProfileCommand:
    def test_json_report(self, tmp_path):
        inputs = write_inputs(tmp_path / "in.jsonl", X)
        result = profile(XOR, "--input", inputs, "--backend", "wasm", "--max-batch", 4, "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["records"] == 20 and report["backend"] == "wasm" and "the path af run takes" in report["header"]
        steps = {(s["workflow"], s["step"]): s for s in report["steps"]}
        assert steps[("execution", "send_output")]["calls"] == 20
        assert steps[("initialization", "load_neural_network")]["calls"] == 1
        assert 20 // 4 <= report["messages"]["task.completion"] <= 20  # one message per backend batch
        assert report["fuel_per_record"]["count"] == 20 and report["fuel_budget"] > report["fuel_per_record"]["max"]
        assert report["backend_seconds_per_record"]["count"] == 20 and report["warmup_calls"] == 1
        assert report["traps"] == {} and report["overhead"] is None

    def test_output_records_match_the_reference(self, tmp_path):
        inputs = write_inputs(tmp_path / "in.jsonl", X)
        out = tmp_path / "out.jsonl"
        result = profile(XOR, "--input", inputs, "--output", out, "--json")
        assert result.exit_code == 0, result.stderr
        got = np.array([orjson.loads(line)["output"] for line in out.read_bytes().splitlines()])
        np.testing.assert_allclose(got, xor_reference(X), rtol=1e-5, atol=1e-6)

    def test_outputs_are_discarded_by_default(self, tmp_path):
        result = profile(XOR, "--input", write_inputs(tmp_path / "in.jsonl", X))
        assert result.exit_code == 0, result.stderr
        assert result.stdout == ""
        assert "the path af run takes" in result.stderr
        for name in ("initialization", "receive_input", "process_neural_network", "cleanup_resources"):
            assert name in result.stderr  # the table shows names uncut, even 80 columns wide
        assert re.search(r"messages sent: agent.lifecycle x3, task.completion x\d+\n", result.stderr)

    def test_traps_by_code(self, tmp_path, example_bundles):
        # the xor network fits in the per-call fuel allowance: the 784-wide example runs out
        inputs = write_inputs(tmp_path / "in.jsonl", np.full((3, 784), 0.5, dtype=np.float32))
        result = profile(example_bundles["classification-agent"], "--input", inputs, "--backend", "wasm",
                         "--fuel", 10, "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["traps"] == {"AF5010": 3}
        steps = {s["step"]: s for s in report["steps"]}
        assert steps["process_neural_network"]["traps"] == 3 and steps["send_output"]["calls"] == 0

    def test_overhead_measures_a_baseline(self, tmp_path):
        result = profile(XOR, "--input", write_inputs(tmp_path / "in.jsonl", X), "--overhead", "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["baseline_records_per_second"] > 0
        assert report["overhead"] == report["baseline_records_per_second"] / report["records_per_second"]

    def test_usage_errors_exit_2(self, tmp_path):
        inputs = write_inputs(tmp_path / "in.jsonl", X)
        assert profile(XOR, "--input", inputs, "--backend", "gpu").exit_code == 2
        missing = profile(XOR, "--input", tmp_path / "nope.jsonl")
        assert missing.exit_code == 2 and "AF0934" in missing.stderr

    def test_bad_bundle_exits_1(self, tmp_path):
        bad = tmp_path / "bad.afb"
        bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 20)
        result = profile(bad, "--input", write_inputs(tmp_path / "in.jsonl", X))
        assert result.exit_code == 1 and "Traceback" not in result.stderr

    def test_missing_bundle_is_a_usage_error(self, tmp_path):
        result = profile(tmp_path / "nope.afb", "--input", write_inputs(tmp_path / "in.jsonl", X))
        assert result.exit_code == 2 and "AF0901" in result.stderr


class TestNewUserBugs:
    """Issue 9, the bugs a new user hits with `af profile`."""

    def test_records_and_json_report_cannot_share_stdout(self, tmp_path):
        inputs = write_inputs(tmp_path / "in.jsonl", X)
        result = profile(XOR, "--input", inputs, "-o", "-", "--json")
        assert result.exit_code == 2
        [error] = json.loads(result.stdout)  # --json: the error too is JSON, and no record went out
        assert error["code"] == "AF0908" and error["hint"]

    def test_records_on_stdout_with_the_table_on_stderr(self, tmp_path):
        result = profile(XOR, "--input", write_inputs(tmp_path / "in.jsonl", X), "-o", "-")
        assert result.exit_code == 0, result.stderr
        assert len([orjson.loads(line) for line in result.stdout.splitlines()]) == len(X)

    def test_fuel_on_onnx_is_a_usage_error(self, tmp_path):
        result = profile(XOR, "--input", write_inputs(tmp_path / "in.jsonl", X), "--backend", "onnx", "--fuel", 5)
        assert result.exit_code == 2 and "AF0907" in result.stderr

    def test_overhead_is_worded_the_right_way_round(self):
        from af.cli.profile import overhead_text

        assert overhead_text(1.25) == "profiling made the run 1.25x slower"
        faster = overhead_text(0.8)
        assert "slower" not in faster and "1.25x faster" in faster

    @pytest.mark.parametrize("columns", [80, 60])
    def test_tables_fit_the_terminal_without_cutting_a_cell(self, tmp_path, columns):
        result = CliRunner().invoke(app, ["profile", str(XOR), "--input", str(write_inputs(tmp_path / "in.jsonl", X))],
                                    env={"COLUMNS": str(columns)})
        assert result.exit_code == 0, result.stderr
        table_lines = [line for line in result.stderr.splitlines()
                       if line.startswith(("workflow ", "initialization", "execution", "shutdown", "--"))]
        # two headers and rules, 3 workflows, 11 steps, and the rule of the layers table
        assert len(table_lines) == 2 * 2 + 3 + 11 + 1
        assert all(len(line) <= columns for line in table_lines)
        for name in ("process_neural_network", "cleanup_resources", "initialization"):
            assert name in result.stderr  # whole, on one line
        assert "left out to fit" in result.stderr

    def test_fit_columns(self):
        from af.cli._output import fit_columns

        rows = [["execution", "process_neural_network", "12", "1,234.5"]]
        columns = ("workflow", "step", "line", "total")
        assert fit_columns(columns, rows, ("total", "line"), 200) == list(columns)
        assert fit_columns(columns, rows, ("total", "line"), 45) == ["workflow", "step", "line"]
        assert fit_columns(columns, rows, ("total", "line"), 10) == []


class TestReportContract:
    """The --json report validates against schemas/profile-1.0.schema.json, its breakdown adds up to the
    wall time, and --trace writes spans that nest (issue 13)."""

    def test_json_validates_and_the_breakdown_adds_up(self, tmp_path):
        import jsonschema

        inputs = write_inputs(tmp_path / "in.jsonl", X)
        result = profile(XOR, "--input", inputs, "--json", "--replicas", 2, "--max-batch", 4)
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        schema = json.loads((ROOT / "schemas" / "profile-1.0.schema.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(report)
        parts = {p["part"]: p["seconds"] for p in report["breakdown"]}
        assert sum(parts.values()) == pytest.approx(report["seconds"], rel=0.10)
        assert parts["process_neural_network (line 44)"] > 0 and sum(report["replicas"].values()) == len(X)

    def test_trace_is_json_with_nested_spans(self, tmp_path):
        inputs = write_inputs(tmp_path / "in.jsonl", X)
        trace = tmp_path / "out" / "trace.json"
        result = profile(XOR, "--input", inputs, "--trace", trace, "--backend", "wasm")
        assert result.exit_code == 0, result.stderr
        events = json.loads(trace.read_text())["traceEvents"]
        spans = sorted((e for e in events if e["ph"] == "X"), key=lambda e: (e["tid"], e["ts"], -e["dur"]))
        stack: list[dict] = []
        for span in spans:
            while stack and (stack[-1]["tid"] != span["tid"] or stack[-1]["ts"] + stack[-1]["dur"] <= span["ts"] + 0.002):
                stack.pop()
            if stack:
                assert span["ts"] + span["dur"] <= stack[-1]["ts"] + stack[-1]["dur"] + 0.002, (span, stack[-1])
            stack.append(span)
        assert {"backend (wasm)", "process_neural_network", "execution", "initialization"} <= {e["name"] for e in spans}

    def test_pictures_fit_80_columns(self, tmp_path, monkeypatch):
        monkeypatch.setenv("COLUMNS", "80")
        inputs = write_inputs(tmp_path / "in.jsonl", X)
        result = profile(XOR, "--input", inputs, "--backend", "wasm")
        assert result.exit_code == 0, result.stderr
        for title in ("where the run's", "time per record in the execution workflow", "fuel per record against the budget"):
            assert title in result.stderr
        assert max(len(line) for line in result.stderr.splitlines()) <= 80


class TestLayers:
    """Time per layer: a separate pass with onnxruntime's profiler, and its events in the trace."""

    @pytest.fixture
    def digits(self, tmp_path):
        rows = (ROOT / "examples" / "classification-inputs.jsonl").read_bytes().splitlines()[:200]
        path = tmp_path / "in.jsonl"
        path.write_bytes(b"\n".join(rows) + b"\n")
        return path

    def test_each_layer_has_its_kernel_time(self, digits):
        result = profile(ROOT / "examples" / "classification-agent.af", "--input", digits, "--json")
        assert result.exit_code == 0, result.stderr
        layers = json.loads(result.stdout)["layers"]
        assert [layer["layer"] for layer in layers] == [0, 1, 2, 3]
        assert all(layer["calls"] >= 64 and layer["seconds"]["mean"] > 0 for layer in layers)
        # 784x128 multiply-adds against 128x64: the first layer is the costly one, by far
        assert layers[0]["seconds"]["mean"] > 2 * layers[1]["seconds"]["mean"]

    def test_the_trace_holds_onnxruntime_layers_inside_backend_calls(self, digits, tmp_path):
        trace = tmp_path / "trace.json"
        result = profile(ROOT / "examples" / "classification-agent.af", "--input", digits, "--trace", trace)
        assert result.exit_code == 0, result.stderr
        events = json.loads(trace.read_text())["traceEvents"]
        backend = [e for e in events if e.get("cat") == "backend"]
        layers = [e for e in events if e.get("cat") == "layer" and e["tid"] != 0]  # tid 0: the warm-up call
        assert len(layers) >= 4 * len(backend) // 2
        for span in layers:
            assert any(b["tid"] == span["tid"] and b["ts"] <= span["ts"] + 0.002
                       and span["ts"] + span["dur"] <= b["ts"] + b["dur"] + 0.002 for b in backend), span

    @pytest.mark.parametrize("backend", ["onnx", "wasm"])
    def test_layer_rows_on_both_backends_add_up_to_the_call(self, digits, backend):
        import jsonschema

        result = profile(ROOT / "examples" / "classification-agent.af", "--input", digits, "--backend", backend,
                         "--json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        schema = json.loads((ROOT / "schemas" / "profile-1.0.schema.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(report)
        layers, layer_pass = report["layers"], report["layer_pass"]
        assert [layer["layer"] for layer in layers] == [0, 1, 2, 3]
        for layer in layers:
            assert layer["calls"] >= 64 and layer["seconds"]["count"] == layer["calls"]
            assert 0 < layer["seconds"]["p50"] <= layer["seconds"]["p95"] <= layer["seconds"]["p99"]
        assert layers[0]["seconds"]["p50"] > 2 * layers[1]["seconds"]["p50"]
        assert layer_pass["available"] and layer_pass["reason"] is None and layer_pass["calls"] >= 64
        # The layers' times, summed per call, against the whole call timed in the same pass: the tolerance
        # docs/tools.md states (measured: within 1% on wasm, about 8% on onnx, whose run adds its own work)
        parts, whole = layer_pass["layers_seconds"]["p50"], layer_pass["call_seconds"]["p50"]
        assert 0.75 * whole <= parts <= 1.25 * whole
        if backend == "wasm":
            fuel = [layer["fuel_per_record"]["mean"] for layer in layers]
            # fuel follows the multiply-adds of each layer (784x128, 128x64, 64x32, 32x10)
            assert fuel[0] / fuel[1] == pytest.approx(784 * 128 / (128 * 64), rel=0.1)
            assert [s["stage"] for s in layer_pass["stages"]] == ["input", "output"]
            assert layer_pass["timer_seconds"] > 0
        else:
            assert all(layer["fuel_per_record"] is None for layer in layers)

    def test_a_dead_relu_layer_is_timed_as_any_other(self, digits, tmp_path):
        """A layer whose relu units are all dead (bias -1e4) still has its row, with the same fuel as when
        alive: the kernels do the same work whatever the values, and nothing is skipped."""
        import dataclasses

        from afc import load_agent_file
        from afc.compile import compile_agent

        spec = load_agent_file(ROOT / "examples" / "classification-agent.af").spec()
        layers = list(spec.network.layers)
        layers[1] = dataclasses.replace(layers[1], bias=np.full_like(layers[1].bias, -1e4))
        dead = dataclasses.replace(spec, network=dataclasses.replace(spec.network, layers=tuple(layers)))
        reports = {}
        for name, agent in (("alive", spec), ("dead", dead)):
            path = tmp_path / f"{name}.afb"
            path.write_bytes(compile_agent(agent, targets=("wasm",)))
            out = tmp_path / f"{name}.jsonl"
            result = profile(path, "--input", digits, "--backend", "wasm", "--json", "-o", out)
            assert result.exit_code == 0, result.stderr
            reports[name] = json.loads(result.stdout)
        # layer 1's relu outputs nothing but zeros, so the network's output is what the last layers make of zeros
        x = np.zeros((1, 64), dtype=np.float32)
        for layer in layers[2:]:
            x = x @ layer.weight.T.astype(np.float64) + layer.bias
            x = np.maximum(x, 0) if layer is not layers[-1] else x
        first = orjson.loads((tmp_path / "dead.jsonl").read_bytes().splitlines()[0])["output"]
        np.testing.assert_allclose(first, x[0], rtol=1e-5, atol=1e-5)
        alive, dead_report = reports["alive"]["layers"], reports["dead"]["layers"]
        assert len(alive) == len(dead_report) == len(layers) == 4  # one row per layer
        for a, d in zip(alive, dead_report):
            assert a["fuel_per_record"] == d["fuel_per_record"]
        assert all(d["seconds"]["p50"] > 0 for d in dead_report[:3])  # the dead layer and the one fed zeros too

    def test_the_wasm_trace_holds_each_calls_stages_inside_it(self, digits, tmp_path):
        trace = tmp_path / "trace.json"
        result = profile(ROOT / "examples" / "classification-agent.af", "--input", digits, "--trace", trace,
                         "--backend", "wasm", "--replicas", 2, "--max-batch", 16)
        assert result.exit_code == 0, result.stderr
        events = json.loads(trace.read_text())["traceEvents"]
        spans = [e for e in events if e["ph"] == "X"]
        backend = [e for e in spans if e["cat"] == "backend"]
        assert sum(e["args"]["records"] for e in backend) == 200
        for tid in {e["tid"] for e in spans}:
            _assert_nested(sorted((e for e in spans if e["tid"] == tid), key=lambda e: (e["ts"], -e["dur"])))
        names = ["input", "layer 0", "layer 1", "layer 2", "layer 3", "output"]
        for call in backend:  # each backend call holds its six stages, in order, with its records and fuel
            inside = sorted((e for e in spans if e["cat"] == "layer" and e["tid"] == call["tid"]
                             and call["ts"] <= e["ts"] and e["ts"] + e["dur"] <= call["ts"] + call["dur"] + 0.002),
                            key=lambda e: e["ts"])
            assert [e["name"] for e in inside] == names, call
            assert {e["args"]["records"] for e in inside} == {call["args"]["records"]}
            assert sum(e["args"]["fuel"] for e in inside) == call["args"]["fuel"]
        warmups = [e for e in spans if e["cat"] == "layer" and e["tid"] == 0]
        assert len(warmups) == 2 * len(names)  # load_neural_network's warm-up call of each replica

    def test_an_old_bundle_runs_and_says_why_it_has_no_layer_times(self, tmp_path):
        old = ROOT / "tests" / "corpus" / "old-bundles" / "xor-before-stage-exports.afb"
        inputs = write_inputs(tmp_path / "in.jsonl", X)
        result = profile(old, "--input", inputs, "--backend", "wasm", "--json", "--trace", tmp_path / "t.json")
        assert result.exit_code == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["records"] == len(X) and report["layers"] == []
        assert not report["layer_pass"]["available"]
        assert "no per-stage exports" in report["layer_pass"]["reason"] and "recompile" in report["layer_pass"]["reason"]
        events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
        assert not [e for e in events if e.get("cat") == "layer"]
        table = profile(old, "--input", inputs, "--backend", "wasm")
        assert table.exit_code == 0
        assert "per-layer time is not available" in " ".join(table.stderr.split())


def _assert_nested(spans: list[dict]) -> None:
    """Each span lies inside the span that encloses its start, or after it (a stack walk)."""
    stack: list[dict] = []
    for span in spans:
        while stack and stack[-1]["ts"] + stack[-1]["dur"] <= span["ts"] + 0.002:
            stack.pop()
        if stack:
            parent = stack[-1]
            assert span["ts"] + span["dur"] <= parent["ts"] + parent["dur"] + 0.002, (span, parent)
        stack.append(span)
