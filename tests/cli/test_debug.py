"""`af debug` through the CLI with commands scripted on stdin: breakpoints, p, trace, quit, usage errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from af.cli import app
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
XOR = ROOT / "examples" / "xor.af"
X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
AF = str(Path(sys.executable).parent / "af")


def xor_reference(x: np.ndarray) -> np.ndarray:
    """float64 forward pass of the example: tanh hidden layer, sigmoid output."""
    from afc import load_agent_file

    return forward64(load_agent_file(XOR).spec().network, x)


@pytest.fixture
def inputs(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "input": row.tolist()}) + b"\n" for i, row in enumerate(X)))
    return path


def debug(*args, commands: str = ""):
    return CliRunner().invoke(app, ["debug", *map(str, args)], input=commands)


class TestDebugCommand:
    def test_breakpoint_and_print_output_max(self, inputs):
        result = debug(XOR, "--input", inputs, "--break", "send_output@3", commands="p output.max\np memory.count\nc\n")
        assert result.exit_code == 0, result.stderr
        assert "stopped (breakpoint send_output@3) before execution/send_output (record 3, id 'r2')" in result.stderr
        value = re.search(r"^output\.max = (\S+)$", result.stderr, re.M).group(1)
        assert float(value) == pytest.approx(xor_reference(X[2:3]).max(), rel=1e-5, abs=1e-6)
        assert re.search(r"^memory\.count = 3$", result.stderr, re.M)  # update_memory ran for records 1-3
        # the source of the stop, rustc-style
        assert re.search(r"^  --> xor\.af:\d+:7\n\s+\d+ \|     - send_output$", result.stderr, re.M)
        outputs = [orjson.loads(line)["output"] for line in result.stdout.splitlines()]
        np.testing.assert_allclose(outputs, xor_reference(X), rtol=1e-5, atol=1e-6)
        assert "1 stops" in result.stderr

    def test_trace_lists_steps_in_declared_order_with_lines(self, inputs):
        result = debug(XOR, "--input", inputs, "--trace")
        assert result.exit_code == 0, result.stderr
        text = XOR.read_text().splitlines()
        steps = re.findall(r"^(\w+): (\w+)(?: \(record (\d+).*)?\n  --> xor\.af:(\d+):7\n\s+(\d+) \| (.*)$",
                           result.stderr, re.M)
        names = [s[1] for s in steps]
        execution = ["receive_input", "process_neural_network", "update_memory", "send_output"]
        assert names == ["load_neural_network", "initialize_memory", "connect_to_swarm", "register_capabilities",
                         *execution * 4, "save_state", "disconnect_from_swarm", "cleanup_resources"]
        for workflow, name, _, line, shown_line, shown in steps:
            assert line == shown_line and text[int(line) - 1] == shown and shown.strip() == f"- {name}"
        assert [int(s[2]) for s in steps if s[0] == "execution"] == [n for n in (1, 2, 3, 4) for _ in range(4)]

    def test_quit_runs_shutdown_and_exits_0(self, inputs):
        result = debug(XOR, "--input", inputs, "--trace", "--break", "update_memory", commands="q\n")
        assert result.exit_code == 0, result.stderr
        after = result.stderr.split("(afdb) q", 1)[1]
        assert "shutdown: save_state" in after and "shutdown: cleanup_resources" in after
        assert "stopped" not in after  # no more breakpoints after quit
        assert "quit" in after.splitlines()[-1]

    def test_bt_and_step(self, inputs):
        result = debug(XOR, "--input", inputs, "--break", "record=r1", commands="bt\ns\np input\nc\n")
        assert result.exit_code == 0, result.stderr
        assert re.search(r"^agent xor-agent-\w+, workflow execution \(record 2, id 'r1'\):\n -> receive_input$",
                         result.stderr, re.M)
        assert "stopped (step) before execution/process_neural_network (record 2, id 'r1')" in result.stderr
        assert 'input = {"id": "r1", "line": 2, "values": [0.0, 1.0]}' in result.stderr

    def test_usage_errors_exit_2(self, inputs):
        bad = debug(XOR, "--input", inputs, "--break", "send_output@zero")
        assert bad.exit_code == 2 and "AF0950" in bad.stderr
        unknown = debug(XOR, "--input", inputs, "--break", "send_outptu")
        assert unknown.exit_code == 2 and "AF0951" in unknown.stderr and "send_output" in unknown.stderr
        stdin = debug(XOR, "--input", "-", "--break", "send_output")
        assert stdin.exit_code == 2 and "AF0952" in stdin.stderr

    def test_a_real_process_reads_commands_from_a_pipe(self, inputs):
        proc = subprocess.run([AF, "debug", str(XOR), "--input", str(inputs), "--break", "send_output@4"],
                              input=b"p output.max\nquit\n", capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        value = re.search(rb"^output\.max = (\S+)$", proc.stderr, re.M).group(1)
        assert float(value) == pytest.approx(xor_reference(X[3:4]).max(), rel=1e-5, abs=1e-6)


class TestNewUserBugs:
    """Issue 9, the bugs a new user hits with `af debug`."""

    def test_a_misspelt_step_gets_did_you_mean(self, inputs):
        result = debug(XOR, "--input", inputs, "--break", "send_otput")
        assert result.exit_code == 2 and "AF0951" in result.stderr
        assert "= help: did you mean `send_output`?" in result.stderr

    def test_a_breakpoint_that_never_matched_is_said(self, inputs):
        result = debug(XOR, "--input", inputs, "--break", "record=nope", "--break", "send_output@2", commands="c\n")
        assert result.exit_code == 0, result.stderr
        assert "note: breakpoint record=nope never matched" in result.stderr
        assert "send_output@2 never" not in result.stderr

    def test_p_input_summarises_wide_inputs(self, example_bundles, tmp_path):
        row = [0.0] * 780 + [0.25, 0.5, 1.0, -2.0]
        path = tmp_path / "wide.jsonl"
        path.write_bytes(orjson.dumps({"id": "w", "input": row}) + b"\n")
        result = debug(example_bundles["classification-agent"], "--input", path, "--break", "send_output",
                       commands="p input\np input[782]\nc\n")
        assert result.exit_code == 0, result.stderr
        line = next(line for line in result.stderr.splitlines() if line.startswith("input = "))
        assert line == ('input = {"id": "w", "line": 1, "values": <784 values: min -2.0, max 1.0, '
                        'first [0.0, 0.0, 0.0, 0.0, 0.0, ...]>}')
        assert "input[782] = 1.0" in result.stderr


def _debug_on_a_terminal(inputs: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """Start `af debug` with a pseudo-terminal as stdin and controlling terminal (so ^C sends SIGINT)."""
    import fcntl
    import os
    import pty
    import termios

    leader, follower = pty.openpty()

    def take_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([AF, "debug", str(XOR), "--input", str(inputs), *args], stdin=follower,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=take_terminal)
    os.close(follower)
    return proc, leader


def _read_until(proc: subprocess.Popen, text: bytes, timeout: float = 60) -> bytes:
    import os
    import select
    import time

    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    assert text in seen, seen.decode(errors="replace")
    return seen


class TestAtATerminal:
    def test_ctrl_c_at_the_prompt_ends_the_run_as_sigint_does(self, inputs):
        import os

        proc, leader = _debug_on_a_terminal(inputs, "--break", "update_memory", "--trace")
        try:
            before = _read_until(proc, b"(afdb) ")
            os.write(leader, b"\x03")  # Ctrl-C, through the terminal's line discipline
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(leader)
            proc.kill()
        err = (before + err).decode()
        assert proc.returncode == 130, err
        after = err.split("(afdb) ", 1)[1]
        assert after.startswith("\n")  # the next message starts its own line
        assert "shutdown: save_state" in after and "shutdown: cleanup_resources" in after
        assert "stopped by SIGINT" in after and "Traceback" not in err
        # the records already read (here the whole small file) were finished and written, in order
        assert [orjson.loads(line)["id"] for line in out.splitlines()] == ["r0", "r1", "r2", "r3"][:len(out.splitlines())]

    def test_ctrl_d_at_the_prompt_continues_on_a_new_line(self, inputs):
        import os

        proc, leader = _debug_on_a_terminal(inputs, "--break", "send_output@4")
        try:
            before = _read_until(proc, b"(afdb) ")
            os.write(leader, b"\x04")  # Ctrl-D: no more commands, the run goes on
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(leader)
            proc.kill()
        err = (before + err).decode()
        assert proc.returncode == 0, err
        assert "(afdb) \n4 records: 4 results" in err
        assert len(out.splitlines()) == 4

    def test_the_prompt_has_line_editing_and_history(self, inputs, tmp_path):
        import fcntl
        import os
        import pty
        import termios

        leader, follower = pty.openpty()

        def take_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        # stdin and stdout on the terminal: the prompt is read through readline
        proc = subprocess.Popen([AF, "debug", str(XOR), "--input", str(inputs), "--break", "update_memory",
                                 "-o", str(tmp_path / "out.jsonl")], stdin=follower, stdout=follower,
                                stderr=subprocess.PIPE, preexec_fn=take_terminal)
        os.close(follower)
        try:
            seen = _read_until(proc, b"(record 1,")
            os.write(leader, b"p memory.cont\x1b[D\x1b[Du\n")  # typo fixed with the arrow keys
            seen += _read_until(proc, b"memory.count = 0")
            os.write(leader, b"c\n")
            seen += _read_until(proc, b"(record 2,")
            os.write(leader, b"\x1b[A\x1b[A\n")  # up twice: `p memory.count` from the history
            seen += _read_until(proc, b"memory.count = 1")
            os.write(leader, b"q\n")
            _, err = proc.communicate(timeout=60)
        finally:
            os.close(leader)
            proc.kill()
        assert proc.returncode == 0, (seen + err).decode()


    def test_a_session_at_a_terminal(self, inputs):
        """Break on a step with a guard, look inside the network, go to the next record, quit."""
        import os

        proc, leader = _debug_on_a_terminal(inputs, "--backend", "wasm", "--break", "send_output when input[0] > 0.5")
        try:
            seen = _read_until(proc, b"(afdb) ")
            for command, answer in ((b"layers\n", b"layer 1 post"), (b"diff\n", b"largest absolute difference"),
                                    (b"fuel\n", b"fuel: the last call used"),
                                    (b"next\n", b"stopped (next record)"), (b"q\n", b"records:")):
                os.write(leader, command)
                seen += _read_until(proc, answer)
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(leader)
            proc.kill()
        text = (seen + err).decode()
        assert proc.returncode == 0, text
        assert "stopped (breakpoint send_output when input[0] > 0.5) before execution/send_output (record 3, id 'r2')" in text
        assert "stopped (next record) before execution/receive_input (record 4, id 'r3')" in text
        assert "Traceback" not in text


class TestInsideTheNetwork:
    """`layers`, `diff`, `fuel`, conditional breakpoints, `next` and `run N` through --commands (issue 13)."""

    @pytest.fixture
    def dead_unit_bundle(self, tmp_path):
        import afc

        source = tmp_path / "dead.af"
        made = CliRunner().invoke(app, ["init", str(tmp_path / "dead"), "--input-size", "3", "--hidden", "4",
                                        "--output-size", "2", "--activation", "relu"])
        assert made.exit_code == 0, made.stderr
        agent = afc.load_agent_file(source)
        weights = {}
        for layer in agent.spec().network.layers:
            weights[f"layers.{layer.index}.weight"] = np.array(layer.weight)
            weights[f"layers.{layer.index}.bias"] = np.array(layer.bias)
        weights["layers.0.weight"][2] = 0.0  # unit 2 of the hidden layer: no input reaches it...
        weights["layers.0.bias"][2] = -1.0  # ...and its bias keeps it below 0: relu makes it dead
        source.write_bytes(afc.write_container(agent.header_text,
                                               [("neural_weights", afc.encode_tensors(weights))]))
        bundle = tmp_path / "dead.afb"
        afc.compile_file(source, output=bundle)
        records = tmp_path / "in.jsonl"
        records.write_text("".join(f'{{"id": "r{i}", "input": [{i}, {1 - i}, 0.5]}}\n' for i in range(3)))
        return bundle, records

    def test_layers_names_the_dead_unit_and_diff_compares_the_backends(self, dead_unit_bundle, tmp_path):
        bundle, records = dead_unit_bundle
        script = tmp_path / "commands.txt"
        script.write_text("# a comment\nlayers\ndiff\nfuel\nrun 1\nlayers\nc\n")
        result = debug(bundle, "--input", records, "--backend", "wasm", "--break", "send_output@1",
                       "--commands", script)
        assert result.exit_code == 0, result.stderr
        err = result.stderr
        hidden = [line for line in err.splitlines() if line.strip().startswith("layer 0 post relu")]
        # unit 2 is dead for every record (the others depend on the input)
        units = [re.search(r"\(units ([\d, ]+)\)", line).group(1).split(", ") for line in hidden]
        assert len(hidden) == 2 and all("2" in found for found in units)
        assert "largest absolute difference" in err
        diff = [line for line in err.splitlines() if re.match(r"^\s+[01]\s+-?[\d.e+-]+\s+-?[\d.e+-]+", line)]
        assert len(diff) == 2 and all(abs(float(l.split()[1]) - float(l.split()[2])) < 1e-4 for l in diff)
        assert "fuel: the last call used" in err
        assert "stopped (next record) before execution/receive_input (record 3, id 'r2')" in err

    def test_a_breakpoint_with_a_guard_stops_only_where_it_holds(self, tmp_path):
        rows = tmp_path / "in.jsonl"
        rows.write_text("".join(f'{{"id": "r{i}", "input": [{i % 2}, {(i // 2) % 2}]}}\n' for i in range(4)))
        result = debug(XOR, "--input", rows, "--break", "send_output when input[0] > 0.5 and input[1] < 0.5",
                       commands="p input.id\nc\n")
        assert result.exit_code == 0, result.stderr
        stops = [line for line in result.stderr.splitlines() if line.startswith("stopped")]
        assert stops == ["stopped (breakpoint send_output when input[0] > 0.5 and input[1] < 0.5) before "
                         "execution/send_output (record 2, id 'r1')"]

    def test_a_bad_condition_is_a_usage_error(self, inputs):
        bad = debug(XOR, "--input", inputs, "--break", "send_output when output.max >")
        assert bad.exit_code == 2 and "AF0950" in bad.stderr and "Traceback" not in bad.stderr
