"""`af run` end to end, as a user runs it: CliRunner for the data paths, subprocesses for signals and kill -9."""

from __future__ import annotations

import json
import re
import signal
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
EXAMPLE = ROOT / "examples" / "classification-agent.af"
AF = str(Path(sys.executable).parent / "af")


@pytest.fixture(scope="module")
def network():
    from afc import load_agent_file

    return load_agent_file(EXAMPLE).spec().network


@pytest.fixture(scope="module")
def inputs_10k(tmp_path_factory):
    """10,000 records: the example's held-out digits cycled, with integer and string ids."""
    rows = [orjson.loads(line)["input"] for line in (ROOT / "examples" / "classification-inputs.jsonl").read_bytes().splitlines() if line.strip()]
    x = np.array([rows[i % len(rows)] for i in range(10_000)], dtype=np.float32)
    path = tmp_path_factory.mktemp("run") / "in.jsonl"
    with open(path, "wb") as fh:
        for i, row in enumerate(x):
            rid = i if i % 2 else f"s{i}"
            fh.write(orjson.dumps({"id": rid, "input": row}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    return path, x


def run_cli(*args, input=None):
    return CliRunner().invoke(app, ["run", *map(str, args)], input=input)


def read_output(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines()]


class TestEndToEnd:
    def test_10k_records_with_4_replicas(self, example_bundles, inputs_10k, network, tmp_path):
        path, x = inputs_10k
        out = tmp_path / "out.jsonl"
        result = run_cli(example_bundles["classification-agent"], "--input", path, "--output", out, "--replicas", 4)
        assert result.exit_code == 0, result.stderr
        records = read_output(out.read_bytes())
        ids = [r["id"] for r in records]
        assert ids == [i if i % 2 else f"s{i}" for i in range(10_000)]  # every id once, in input order
        got = np.array([r["output"] for r in records], dtype=np.float64)
        np.testing.assert_allclose(got, forward64(network, x), rtol=1e-5, atol=1e-5)
        # The replicas shared the work (how evenly depends on scheduling: at least two took batches).
        assert 2 <= len({r["agent"] for r in records}) <= 4
        assert "10000 records: 10000 results, 0 errors" in result.stderr

    def test_bad_records_fail_alone(self, example_bundles, inputs_10k, network, tmp_path):
        path, x = inputs_10k
        lines = path.read_bytes().splitlines()
        lines[10] = b'{"id": "broken", "input": [0.1, 0.2'  # malformed: line 11
        lines[20] = orjson.dumps({"id": "short", "input": [0.5] * 783})
        lines[30] = b'{"id": "nan", "input": [NaN' + b", 0.0" * 783 + b"]}"
        src = tmp_path / "in.jsonl"
        src.write_bytes(b"\n".join(lines) + b"\n")
        result = run_cli(example_bundles["classification-agent"], "--input", src, "--replicas", 4, "--json")
        assert result.exit_code == 0
        records = read_output(result.stdout_bytes)
        assert len(records) == 10_000
        errors = {i: r["error"] for i, r in enumerate(records) if "error" in r}
        assert sorted(errors) == [10, 20, 30]
        assert records[10]["id"] is None and errors[10]["code"] == "AF5230" and "line 11" in errors[10]["message"]
        assert '{"id": "broken"' in errors[10]["message"]
        assert records[20]["id"] == "short" and errors[20]["code"] == "AF5232"
        assert records[30]["id"] is None and errors[30]["code"] == "AF5231"
        good = [i for i in range(10_000) if i not in errors]
        got = np.array([records[i]["output"] for i in good], dtype=np.float64)
        np.testing.assert_allclose(got, forward64(network, x[good]), rtol=1e-5, atol=1e-5)
        summary = json.loads(result.stderr.strip().splitlines()[-1])
        assert summary["records"] == 10_000 and summary["errors"] == 3 and summary["results"] == 9_997

    @pytest.mark.parametrize("backend", ["onnx", "wasm"])
    def test_numbers_written_as_strings_or_booleans_are_errors(self, example_bundles, backend):
        # Alone in their batch (no other bad record to send the batch down the exact check).
        row = [0.25] * 784
        lines = [orjson.dumps({"id": "as-string", "input": ["0.5"] + row[1:]}),
                 orjson.dumps({"id": "boolean", "input": row[:5] + [True] + row[6:]}),
                 orjson.dumps({"id": "fine", "input": row})]
        result = run_cli(example_bundles["classification-agent"], "--backend", backend, input=b"\n".join(lines) + b"\n")
        assert result.exit_code == 0, result.stderr
        records = read_output(result.stdout_bytes)
        assert [r.get("error", {}).get("code") for r in records] == ["AF5233", "AF5233", None]
        assert "input[0] is a string" in records[0]["error"]["message"]
        assert "input[5] is a boolean" in records[1]["error"]["message"]

    def test_a_reader_that_goes_away_ends_the_run_quietly(self, example_bundles, inputs_10k):
        # `af run ... | head -n 1`: once the pipe closes, reading stops and af exits 0, no traceback.
        proc = subprocess.Popen([AF, "run", str(example_bundles["classification-agent"]), "--input", str(inputs_10k[0])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = proc.stdout.readline()
        proc.stdout.close()
        try:
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
        assert orjson.loads(first)["id"] == "s0"
        assert code == 0 and b"Traceback" not in proc.stderr.read()

    def test_an_output_that_cannot_be_written_is_a_clear_error(self, example_bundles, inputs_10k):
        result = subprocess.run([AF, "run", str(example_bundles["classification-agent"]), "--input", str(inputs_10k[0]),
                                 "--output", "/dev/full"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "AF5238" in result.stderr and "Traceback" not in result.stderr

    def test_fail_on_error_exits_1(self, example_bundles):
        result = run_cli(example_bundles["classification-agent"], "--fail-on-error", input="[1, 2]\n")
        assert result.exit_code == 1
        assert read_output(result.stdout_bytes)[0]["error"]["code"] == "AF5232"

    def test_bare_arrays_and_blank_lines(self, example_bundles):
        row = "[" + ",".join(["0.5"] * 784) + "]"
        result = run_cli(example_bundles["classification-agent"], input=f"{row}\n\n{row}\n")
        assert result.exit_code == 0
        assert [r["id"] for r in read_output(result.stdout_bytes)] == [1, 3]

    def test_af_source_is_compiled_in_memory(self, tmp_path):
        row = "[" + ",".join(["0.25"] * 784) + "]"
        before = sorted(EXAMPLE.parent.iterdir())
        result = run_cli(EXAMPLE, "--backend", "wasm", input=row + "\n")
        assert result.exit_code == 0, result.stderr
        assert len(read_output(result.stdout_bytes)[0]["output"]) == 10
        assert sorted(EXAMPLE.parent.iterdir()) == before  # nothing written beside the source

    def test_wasm_backend_agrees(self, example_bundles, inputs_10k, network):
        path, x = inputs_10k
        head = b"".join(path.read_bytes().splitlines(keepends=True)[:50])
        result = run_cli(example_bundles["classification-agent"], "--backend", "wasm", input=head)
        assert result.exit_code == 0, result.stderr
        got = np.array([r["output"] for r in read_output(result.stdout_bytes)], dtype=np.float64)
        np.testing.assert_allclose(got, forward64(network, x[:50]), rtol=1e-5, atol=1e-5)

    def test_no_send_output_is_said_once(self, tmp_path):
        source = EXAMPLE.read_text().replace("    - send_output\n", "")
        agent = tmp_path / "quiet.af"
        agent.write_text(source)
        row = "[" + ",".join(["0.5"] * 784) + "]"
        result = run_cli(agent, input=f"{row}\n{row}\n")
        assert result.exit_code == 0
        assert [r["error"]["code"] for r in read_output(result.stdout_bytes)] == ["AF5210", "AF5210"]
        assert result.stderr.count("no send_output") == 1


class TestGuardsThroughTheCompiler:
    def test_guard_written_in_the_af_file(self, tmp_path, inputs_10k, network):
        path, x = inputs_10k
        source = EXAMPLE.read_text().replace(
            "    - send_output\n", "    - send_output when output.max > 15 and memory.count % 2 == 0\n")
        agent = tmp_path / "guarded.af"
        agent.write_text(source)
        head = b"".join(path.read_bytes().splitlines(keepends=True)[:40])
        result = run_cli(agent, "--max-batch", 16, input=head)
        assert result.exit_code == 0, result.stderr
        records = read_output(result.stdout_bytes)
        peaks = forward64(network, x[:40]).max(axis=1)
        expected = [(i + 1) % 2 == 0 and peaks[i] > 15 for i in range(40)]  # memory.count is 1-based
        assert ["output" in r for r in records] == expected
        # held back on purpose: a filtered record of its own, not an error
        step = "send_output when output.max > 15 and memory.count % 2 == 0"
        assert all(r == {"id": r["id"], "filtered": {"step": step}} for r, ok in zip(records, expected) if not ok)
        assert "filtered" in result.stderr and ", 0 errors" in result.stderr

    def test_filtered_records_do_not_fail_the_run(self, tmp_path, inputs_10k):
        path, _ = inputs_10k
        source = EXAMPLE.read_text().replace("    - send_output\n", "    - send_output when output.max > 1e30\n")
        agent = tmp_path / "filter-all.af"
        agent.write_text(source)
        head = b"".join(path.read_bytes().splitlines(keepends=True)[:10])
        result = run_cli(agent, "--fail-on-error", "--json", input=head)
        assert result.exit_code == 0, result.stderr
        assert [r["filtered"]["step"] for r in read_output(result.stdout_bytes)] == [
            "send_output when output.max > 1e30"] * 10
        summary = json.loads(result.stderr.strip().splitlines()[-1])
        assert (summary["filtered"], summary["errors"], summary["results"]) == (10, 0, 0)


class TestExitCodes:
    def test_missing_bundle_is_a_usage_error_with_help(self, tmp_path):
        result = run_cli(tmp_path / "nope.afb", input="")
        assert result.exit_code == 2 and "AF0901" in result.stderr and "= help: " in result.stderr

    def test_corrupt_bundle_exits_1_and_leaves_the_output_alone(self, tmp_path):
        bad = tmp_path / "bad.afb"
        bad.write_bytes(b"not a bundle")
        out = tmp_path / "previous.jsonl"
        out.write_text("kept\n")
        result = run_cli(bad, "--output", out, input="")
        assert result.exit_code == 1 and "Traceback" not in result.stderr
        assert out.read_text() == "kept\n"

    def test_usage_errors_exit_2(self, example_bundles, tmp_path):
        bundle = example_bundles["classification-agent"]
        assert run_cli(bundle, "--replicas", 0).exit_code == 2
        assert run_cli(bundle, "--backend", "gpu").exit_code == 2
        assert run_cli(bundle, "--input", tmp_path / "missing.jsonl").exit_code == 2


def _agent_with_periodic_save(tmp_path: Path) -> Path:
    source = EXAMPLE.read_text().replace("    - send_output\n", "    - send_output\n    - save_state(every=10)\n")
    path = tmp_path / "saver.af"
    path.write_text(source)
    bundle = tmp_path / "saver.afb"
    subprocess.run([AF, "compile", str(path), "-o", str(bundle)], check=True, capture_output=True)
    return bundle


def _start(bundle: Path, state: Path) -> subprocess.Popen:
    return subprocess.Popen([AF, "run", str(bundle), "--state-dir", str(state), "--batch-wait-ms", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _feed(proc: subprocess.Popen, count: int, start: int = 0) -> list[dict]:
    row = ",".join(["0.5"] * 784)
    for i in range(start, start + count):
        proc.stdin.write(f'{{"id": {i}, "input": [{row}]}}\n'.encode())
    proc.stdin.flush()
    return [orjson.loads(proc.stdout.readline()) for _ in range(count)]


class TestResources:
    def test_fuel_limit_fails_each_record_and_the_run_goes_on(self, example_bundles):
        row = "[" + ",".join(["0.5"] * 784) + "]\n"
        result = run_cli(example_bundles["classification-agent"], "--backend", "wasm", "--fuel", 10, input=row * 3)
        assert result.exit_code == 0, result.stderr
        errors = [r["error"] for r in read_output(result.stdout_bytes)]
        assert [e["code"] for e in errors] == ["AF5010"] * 3
        # it says what the call had and what it needed (measured once more with 10x the budget)
        assert re.search(r"budget of [\d,]+ fuel \(10 per record\); it needed more than [\d,]+", errors[0]["message"])


class TestStateAcrossRestarts:
    def test_kill_9_then_restart_restores_the_checkpoint(self, tmp_path):
        bundle = _agent_with_periodic_save(tmp_path)
        state = tmp_path / "state"
        proc = _start(bundle, state)
        first = _feed(proc, 35)
        proc.kill()  # SIGKILL: no shutdown workflow, only the periodic checkpoints survive
        proc.wait()
        agent_id = first[0]["agent"]
        proc = _start(bundle, state)
        again = _feed(proc, 5, start=35)
        _, err = proc.communicate(timeout=60)  # closes stdin: end of input
        assert proc.returncode == 0, err.decode()
        assert again[0]["agent"] == agent_id  # same identity
        assert "memory.count=30" in err.decode()  # the last periodic checkpoint before the kill
        from afrt.state import load_checkpoint, load_or_create_identity

        directory = state / "classification-agent" / "r0"
        identity, created = load_or_create_identity(directory, "classification-agent")
        assert not created and load_checkpoint(directory, identity)["memory"]["count"] == 35

    def test_truncated_checkpoint_is_a_clear_error(self, tmp_path, example_bundles):
        state = tmp_path / "state"
        bundle = example_bundles["classification-agent"]
        row = "[" + ",".join(["0.5"] * 784) + "]\n"
        assert run_cli(bundle, "--state-dir", state, input=row).exit_code == 0
        checkpoint = state / "classification-agent" / "r0" / "checkpoint.afs"
        checkpoint.write_bytes(checkpoint.read_bytes()[:-10])
        damaged = checkpoint.read_bytes()
        proc = subprocess.run([AF, "run", str(bundle), "--state-dir", str(state)], input=row.encode(),
                              capture_output=True, timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode == 1
        assert "AF5250" in err and "truncated" in err and "Traceback" not in err
        assert checkpoint.read_bytes() == damaged  # refused, not overwritten by a shutdown save_state


class TestSignals:
    @pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
    def test_signal_runs_shutdown_and_flushes(self, tmp_path, example_bundles, sig, code):
        state = tmp_path / "state"
        proc = _start(example_bundles["classification-agent"], state)
        got = _feed(proc, 7)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err.decode()
        assert [r["id"] for r in got] == list(range(7)) and out == b""
        assert f"stopped by {sig.name}" in err.decode()
        # the shutdown workflow's save_state ran: the checkpoint holds all 7 records
        from afrt.state import load_checkpoint, load_or_create_identity

        directory = state / "classification-agent" / "r0"
        identity, _ = load_or_create_identity(directory, "classification-agent")
        assert load_checkpoint(directory, identity)["memory"]["count"] == 7


class TestReplicaCap:
    def test_too_many_replicas_is_a_usage_error_before_anything_starts(self, tmp_path):
        from af.cli._load import MAX_REPLICAS

        result = CliRunner().invoke(app, ["run", str(tmp_path / "missing.afb"), "--replicas", str(MAX_REPLICAS + 1)])
        assert result.exit_code == 2
        assert "--replicas" in result.output


class TestNewUserBugs:
    """Issue 9, the bugs a new user hits with `af run`."""

    def test_fuel_on_onnx_is_a_usage_error(self, example_bundles):
        row = "[" + ",".join(["0.5"] * 784) + "]\n"
        for args in (["--backend", "onnx", "--fuel", 10], ["--fuel", 10]):  # explicit, or the bundle's default
            result = run_cli(example_bundles["classification-agent"], *args, input=row)
            assert result.exit_code == 2 and "AF0907" in result.stderr and "--backend wasm" in result.stderr
            assert result.stdout == ""

    def test_a_wasm_only_bundle_runs_without_backend(self, tmp_path):
        bundle = tmp_path / "wasm-only.afb"
        subprocess.run([AF, "compile", str(EXAMPLE), "--target", "wasm", "-o", str(bundle), "-q"], check=True)
        row = "[" + ",".join(["0.5"] * 784) + "]\n"
        result = run_cli(bundle, input=row)
        assert result.exit_code == 0, result.stderr
        assert len(read_output(result.stdout_bytes)[0]["output"]) == 10
        assert run_cli(bundle, "--fuel", 10, input=row).exit_code == 0  # wasm: --fuel applies

    def test_output_directories_are_created(self, example_bundles, tmp_path):
        out = tmp_path / "results" / "deeper" / "out.jsonl"
        row = "[" + ",".join(["0.5"] * 784) + "]\n"
        result = run_cli(example_bundles["classification-agent"], "-o", out, input=row)
        assert result.exit_code == 0, result.stderr
        assert len(read_output(out.read_bytes())) == 1

    def test_output_naming_a_directory_is_refused(self, example_bundles, tmp_path):
        result = run_cli(example_bundles["classification-agent"], "-o", tmp_path, input="")
        assert result.exit_code == 2 and "AF0905" in result.stderr and list(tmp_path.iterdir()) == []

    def test_an_af_file_is_known_by_its_content_not_its_name(self, tmp_path):
        upper = tmp_path / "IRIS.AF"
        upper.write_bytes(EXAMPLE.read_bytes())
        row = "[" + ",".join(["0.5"] * 784) + "]\n"
        result = run_cli(upper, input=row)
        assert result.exit_code == 0, result.stderr
        assert len(read_output(result.stdout_bytes)) == 1

    def test_a_file_of_another_kind_says_what_it_is(self, tmp_path):
        weights = tmp_path / "w.safetensors"
        weights.write_bytes((14).to_bytes(8, "little") + b'{"a":"b"}     ')
        result = run_cli(weights, input="")
        assert result.exit_code == 2 and "AF0904" in result.stderr and "safetensors" in result.stderr

    def test_many_agents_are_summarised(self, example_bundles):
        result = run_cli(example_bundles["xor"], "--replicas", 12, input="[0, 1]\n")
        assert result.exit_code == 0, result.stderr
        line = next(line for line in result.stderr.splitlines() if line.startswith("agents: "))
        assert line.count("xor-agent-") == 4 and " and 8 more" in line
        assert len(line) < 200

    def test_summarise_list(self):
        from af.cli.run import summarise_list

        assert summarise_list(["a", "b"]) == "a, b"
        assert summarise_list([str(i) for i in range(5)]) == "0, 1, 2, 3, 4"
        assert summarise_list([str(i) for i in range(10_000)]) == "0, 1, 2, 3 and 9,996 more"

    def test_a_terminal_on_stdin_is_told_where_records_come_from(self, example_bundles):
        import os
        import pty

        leader, follower = pty.openpty()
        proc = subprocess.Popen([AF, "run", str(example_bundles["xor"])], stdin=follower,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(follower)
        try:
            os.write(leader, b"[0, 1]\n\x04")  # one record, then Ctrl-D
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(leader)
            proc.kill()
        assert proc.returncode == 0, err.decode()
        assert err.decode().splitlines()[0] == "reading records from stdin (Ctrl-D to end)"
        assert len(read_output(out)) == 1

    def test_stdin_from_a_pipe_gets_no_such_note(self, example_bundles):
        result = subprocess.run([AF, "run", str(example_bundles["xor"])], input=b"[0, 1]\n", capture_output=True,
                                timeout=60)
        assert result.returncode == 0 and b"reading records from stdin" not in result.stderr

    def test_json_summary_errors_are_json_too(self, tmp_path):
        result = run_cli(tmp_path / "missing.afb", "--json", input="")
        assert result.exit_code == 2 and result.stdout == ""
        [error] = json.loads(result.stderr)
        assert error["code"] == "AF0901" and error["path"] == str(tmp_path / "missing.afb")

    def test_quiet_keeps_the_terminal_note_off_too(self, example_bundles):
        import os
        import pty

        leader, follower = pty.openpty()
        proc = subprocess.Popen([AF, "run", str(example_bundles["xor"]), "--quiet"], stdin=follower,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(follower)
        try:
            os.write(leader, b"[0, 1]\n\x04")
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(leader)
            proc.kill()
        assert proc.returncode == 0 and err == b"" and len(read_output(out)) == 1
