"""The debugger: breakpoint and field-path parsing, and scripted sessions on a real run of examples/xor.af."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

import afrt
from afcore.errors import UsageError
from afcore.steps import Field
from afdebug import Breakpoint, Debugger, ensure_breakpoints, parse_breakpoint, parse_field
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)


@pytest.fixture(scope="module")
def xor_bundle() -> bytes:
    from afc import load_agent_file
    from afc.compile import compile_agent

    return compile_agent(load_agent_file(XOR).spec(), targets=("onnx",))


def xor_reference(x: np.ndarray) -> np.ndarray:
    """float64 forward pass of the example: tanh hidden layer, sigmoid output."""
    from afc import load_agent_file

    return forward64(load_agent_file(XOR).spec().network, x)


def declared_lines(text: str) -> dict[str, int]:
    """Step name -> the 1-based line of ``- step`` in the .af text, found independently of the compiler."""
    return {m.group(1): text.count("\n", 0, m.start()) + 1 for m in re.finditer(r"^\s+- (\w+)\s*$", text, re.M)}


def session(bundle: bytes, commands: list[str], **options) -> tuple[list[str], Debugger]:
    """Run X through one replica with batches of one under a debugger fed ``commands``."""
    agent = afrt.load(bundle)
    script = iter(commands)
    out: list[str] = []
    stop = asyncio.Event()
    debugger = Debugger(read=lambda: next(script, None), write=out.append, on_quit=stop.set,
                        source=agent.bundle.members["agent.yaml"].decode(), **options)
    source = io.BytesIO(b"".join(orjson.dumps({"id": f"r{i}", "input": row.tolist()}) + b"\n" for i, row in enumerate(X)))
    run = afrt.run_jsonl(agent, source, io.BytesIO(), afrt.RunOptions(instrument=debugger, max_batch=1), stop=stop)
    asyncio.run(run)
    return out, debugger


class TestParseBreakpoint:
    @pytest.mark.parametrize(("text", "expected"), [
        ("send_output", Breakpoint(step="send_output")),
        ("update_memory@3", Breakpoint(step="update_memory", nth=3)),
        ("record=r7", Breakpoint(record_id="r7")),
    ])
    def test_forms(self, text, expected):
        assert parse_breakpoint(text) == expected
        assert str(parse_breakpoint(text)) == text

    @pytest.mark.parametrize("text", ["", "send_output@0", "send_output@x", "record=", "a b", "x@1@2"])
    def test_bad_forms_are_af0950(self, text):
        with pytest.raises(UsageError) as info:
            parse_breakpoint(text)
        assert info.value.code == "AF0950"

    def test_unknown_step_is_af0951_and_lists_the_steps(self, xor_bundle):
        workflows = afrt.load(xor_bundle).workflows
        ensure_breakpoints([Breakpoint(step="send_output"), Breakpoint(record_id="x")], workflows)
        with pytest.raises(UsageError) as info:
            ensure_breakpoints([Breakpoint(step="send_outptu")], workflows)
        assert info.value.code == "AF0951" and "send_output" in info.value.hint


class TestParseField:
    @pytest.mark.parametrize(("text", "expected"), [
        ("output", Field("output")),
        ("output.max", Field("output", ("max",))),
        ("memory.count", Field("memory", ("count",))),
        ("input[1]", Field("input", (1,))),
        ("output.0", Field("output", (0,))),
        ("memory.class_counts.x", Field("memory", ("class_counts", "x"))),
    ])
    def test_paths(self, text, expected):
        assert parse_field(text) == expected

    @pytest.mark.parametrize("text", ["", "self.x", "output.", "output..max", "__import__('os')", "output[1"])
    def test_not_paths(self, text):
        with pytest.raises(ValueError):
            parse_field(text)


class TestSession:
    def test_breakpoint_on_the_nth_record_prints_fields(self, xor_bundle):
        out, debugger = session(xor_bundle, ["p output.max", "p output", "p memory.count", "p input[1]", "bt", "c"],
                                breakpoints=[Breakpoint(step="update_memory", nth=2)])
        assert debugger.stops == 1
        assert out[0] == "stopped (breakpoint update_memory@2) before execution/update_memory (record 2, id 'r1')"
        peak = xor_reference(X[1:2]).max()
        printed = dict(line.split(" = ", 1) for line in out if " = " in line)
        assert float(printed["output.max"]) == pytest.approx(peak, rel=1e-5, abs=1e-6)
        assert orjson.loads(printed["output"]) == pytest.approx(xor_reference(X[1:2])[0].tolist(), rel=1e-5, abs=1e-6)
        assert printed["memory.count"] == "1"  # update_memory has not run yet for record 2
        assert printed["input[1]"] == "1.0"
        where = out.index(next(line for line in out if line.startswith("agent xor-agent-")))
        assert out[where].endswith("workflow execution (record 2, id 'r1'):")
        assert out[where + 1:where + 5] == ["    receive_input", "    process_neural_network", " -> update_memory",
                                            "    send_output"]

    def test_a_field_that_does_not_exist_yet_is_an_error_line(self, xor_bundle):
        out, _ = session(xor_bundle, ["p output.max", "p memory.nope", "p bogus", "c"],
                         breakpoints=[Breakpoint(step="process_neural_network", nth=1)])
        assert out[-3].startswith("error[AF5201]: field `output.max` does not exist here")
        assert out[-2].startswith("error[AF5201]: field `memory.nope`")
        assert out[-1].startswith("error: `bogus` is not a field path")

    def test_step_stops_at_the_next_step(self, xor_bundle):
        out, debugger = session(xor_bundle, ["s", "s", "c"], breakpoints=[Breakpoint(record_id="r3")])
        stops = [line for line in out if line.startswith("stopped")]
        assert stops == [
            "stopped (breakpoint record=r3) before execution/receive_input (record 4, id 'r3')",
            "stopped (step) before execution/process_neural_network (record 4, id 'r3')",
            "stopped (step) before execution/update_memory (record 4, id 'r3')",
        ]

    def test_trace_lists_the_steps_in_declared_order_with_their_lines(self, xor_bundle):
        out, _ = session(xor_bundle, [], trace=True)
        lines = declared_lines(XOR.read_text())
        traced = [line.split(": ", 1)[1].split(" (")[0] for line in out if not line.startswith(" ")]
        init = ["load_neural_network", "initialize_memory", "connect_to_swarm", "register_capabilities"]
        execution = ["receive_input", "process_neural_network", "update_memory", "send_output"]
        assert traced == init + execution * 4 + ["save_state", "disconnect_from_swarm", "cleanup_resources"]
        arrows = [line for line in out if line.startswith("  --> ")]
        assert arrows[0] == f"  --> xor.af:{lines['load_neural_network']}:7"
        sources = [line for line in out if re.match(r"\s+\d+ \| ", line)]
        text_lines = XOR.read_text().splitlines()
        for source_line in sources:
            number, shown = source_line.split(" | ", 1)
            assert text_lines[int(number) - 1] == shown
        assert sources[4].strip() == f"{lines['receive_input']} |     - receive_input"

    def test_quit_stops_breaking_and_shutdown_runs(self, xor_bundle):
        out, debugger = session(xor_bundle, ["q", "c", "c"], trace=True, breakpoints=[Breakpoint(step="send_output")])
        assert debugger.quitted and debugger.stops == 1
        after = out[out.index(next(line for line in out if line.startswith("stopped"))) + 1:]
        assert "shutdown: save_state" in after and "shutdown: cleanup_resources" in after

    def test_no_more_commands_means_continue(self, xor_bundle):
        out, debugger = session(xor_bundle, [], breakpoints=[Breakpoint(step="send_output")])
        assert debugger.stops == 4  # one per record, each resumed because stdin had nothing more
