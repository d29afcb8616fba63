"""`af run` under faults, as a process: a full disk, a refused start, kill -9 with checkpoints, and a
SIGTERM while the reader of stdout has stopped reading. Nothing crashes and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "classification-agent.af"
AF = str(Path(sys.executable).parent / "af")


@pytest.fixture(scope="module")
def records_file(tmp_path_factory) -> Path:
    """6,000 records of the example's inputs (about 26 MB: far more than a pipe holds)."""
    rows = [line for line in (ROOT / "examples" / "classification-inputs.jsonl").read_bytes().splitlines() if line]
    path = tmp_path_factory.mktemp("faults") / "in.jsonl"
    with open(path, "wb") as fh:
        for i in range(6000):
            fh.write(orjson.dumps({"id": i, "input": orjson.loads(rows[i % len(rows)])["input"]}) + b"\n")
    return path


def af(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([AF, *map(str, args)], capture_output=True, timeout=120, **kwargs)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 100 KiB tmpfs: a disk that fills up (needs root, as CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class TestFullDisk:
    def test_a_disk_that_fills_up_is_one_clear_error(self, example_bundles, records_file, tiny_disk):
        out = tiny_disk / "out.jsonl"
        result = af("run", example_bundles["classification-agent"], "--input", records_file, "--output", out)
        stderr = result.stderr.decode()
        assert result.returncode == 1, stderr
        assert "AF5238" in stderr and "Traceback" not in stderr
        # what was written is whole lines, in order, from the first record
        data = out.read_bytes()
        complete = data[: data.rfind(b"\n") + 1].splitlines()
        assert [orjson.loads(line)["id"] for line in complete] == list(range(len(complete)))
        assert len(complete) > 10


class TestRefusedStart:
    def test_a_locked_state_directory_truncates_no_output(self, example_bundles, records_file, tmp_path):
        from afrt.state import lock_state_dir, replica_dir

        state = tmp_path / "state"
        out = tmp_path / "previous.jsonl"
        out.write_bytes(b"precious\n")
        fd = lock_state_dir(replica_dir(state, "classification-agent", 0))
        try:
            result = af("run", example_bundles["classification-agent"], "--input", records_file, "--output", out,
                        "--state-dir", state)
        finally:
            os.close(fd)
        assert result.returncode == 1 and b"AF5255" in result.stderr
        assert out.read_bytes() == b"precious\n"

    def test_a_corrupt_checkpoint_truncates_no_output(self, example_bundles, records_file, tmp_path):
        from afrt.state import CHECKPOINT_NAME, replica_dir

        state = tmp_path / "state"
        first = af("run", example_bundles["classification-agent"], "--input", records_file, "--output",
                   tmp_path / "first.jsonl", "--state-dir", state)
        assert first.returncode == 0, first.stderr
        checkpoint = replica_dir(state, "classification-agent", 0) / CHECKPOINT_NAME
        checkpoint.write_bytes(checkpoint.read_bytes()[:-10])
        out = tmp_path / "previous.jsonl"
        out.write_bytes(b"precious\n")
        result = af("run", example_bundles["classification-agent"], "--input", records_file, "--output", out,
                    "--state-dir", state)
        assert result.returncode == 1 and b"AF5250" in result.stderr
        assert out.read_bytes() == b"precious\n"


class TestCheckpointsFollowTheOutput:
    def test_kill_9_never_leaves_memory_counting_a_record_with_no_output(self, example_bundles, records_file,
                                                                         tmp_path):
        source = EXAMPLE.read_text().replace("    - send_output\n", "    - send_output\n    - save_state(every=1)\n")
        agent = tmp_path / "saving.af"
        agent.write_text(source)
        bundle = tmp_path / "saving.afb"
        assert af("compile", agent, "-o", bundle).returncode == 0
        state = tmp_path / "state"
        # stdout is a pipe nobody reads: it fills up, and the run is killed while it waits for it
        proc = subprocess.Popen([AF, "run", str(bundle), "--input", str(records_file), "--state-dir", str(state),
                                 "--max-batch", "16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(4)
        proc.kill()
        proc.wait(timeout=30)
        written = proc.stdout.read().count(b"\n")  # what the kernel took before the kill
        from afrt.state import load_checkpoint, load_or_create_identity, replica_dir

        directory = replica_dir(state, "classification-agent", 0)
        identity, _ = load_or_create_identity(directory, "classification-agent")
        payload = load_checkpoint(directory, identity)
        assert payload is not None and 0 < payload["memory"]["count"] <= written


class TestStalledReader:
    def test_sigterm_ends_the_run_in_bounded_time_and_says_what_was_written(self, example_bundles, records_file):
        proc = subprocess.Popen([AF, "run", str(example_bundles["classification-agent"]), "--input",
                                 str(records_file), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(4)  # the pipe fills up: nobody reads stdout
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                _, stderr = _communicate_without_reading_stdout(proc, timeout=20)
            except subprocess.TimeoutExpired:
                pytest.fail("af run stayed blocked after SIGTERM with a stalled reader")
            assert time.monotonic() - started < 20
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 143, stderr
        summary = json.loads(stderr.decode().strip().splitlines()[-1])
        assert summary["interrupted"] == "SIGTERM" and summary["unwritten"] > 0
        assert summary["written"] + summary["unwritten"] == summary["records"]


def _communicate_without_reading_stdout(proc: subprocess.Popen, timeout: float) -> tuple[None, bytes]:
    stderr = b""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.1)
    stderr = proc.stderr.read()
    return None, stderr


def _wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    pytest.fail(f"{path} never reached {n} lines")


class TestNonFiniteOutputs:
    """An output holding NaN or infinity is an error record (AF5211), never `null`, and never memory."""

    def test_an_input_that_overflows_float32_arithmetic(self, example_bundles, tmp_path):
        good = orjson.loads((ROOT / "examples" / "classification-inputs.jsonl").read_bytes().splitlines()[0])["input"]
        lines = [orjson.dumps({"id": "ok", "input": good}), orjson.dumps({"id": "huge", "input": [3e38] * 784}),
                 orjson.dumps({"id": "ok2", "input": good})]
        source = tmp_path / "in.jsonl"
        source.write_bytes(b"\n".join(lines) + b"\n")
        for backend in ("onnx", "wasm"):
            state = tmp_path / f"state-{backend}"
            result = af("run", example_bundles["classification-agent"], "--input", source, "--backend", backend,
                        "--state-dir", state)
            records = [orjson.loads(line) for line in result.stdout.splitlines()]
            assert result.returncode == 0, result.stderr
            assert [r.get("error", {}).get("code") for r in records] == [None, "AF5211", None], backend
            assert b"null" not in result.stdout
            # the checkpoint restores cleanly: a second run over the same state directory works
            again = af("run", example_bundles["classification-agent"], "--input", source, "--backend", backend,
                       "--state-dir", state)
            assert again.returncode == 0 and b"AF9999" not in again.stdout, again.stderr

    def test_nan_weights(self, tmp_path):
        import numpy as np

        from afc.tensors import encode_tensors
        from afc.writer import write_container

        text = (ROOT / "examples" / "xor.af").read_text()
        header, _, _ = text.partition("---BINARY_SECTION:")
        from afc import load_agent_file

        layers = load_agent_file(ROOT / "examples" / "xor.af").spec().network.layers
        weights = {}
        for i, layer in enumerate(layers):
            weights[f"layers.{i}.weight"] = np.array(layer.weight, np.float32)
            weights[f"layers.{i}.bias"] = np.array(layer.bias, np.float32)
        weights["layers.0.weight"][0, 0] = float("nan")
        agent = tmp_path / "nan.af"
        agent.write_bytes(write_container(header, [("neural_weights", encode_tensors(weights))]))
        source = tmp_path / "in.jsonl"
        source.write_bytes(b"[0, 0]\n[1, 0]\n")
        result = af("run", agent, "--input", source)
        assert result.returncode == 0, result.stderr
        assert [orjson.loads(line)["error"]["code"] for line in result.stdout.splitlines()] == ["AF5211", "AF5211"]


class TestLimitsSaidOnce:
    def test_cpu_cores_beyond_the_machine_is_capped_with_a_note(self, tmp_path):
        text = (ROOT / "examples" / "xor.af").read_text()
        assert "cpu_cores:" in text
        import re

        agent = tmp_path / "many-cores.af"
        agent.write_text(re.sub(r"cpu_cores: [0-9.]+", "cpu_cores: 1024", text, count=1))
        source = tmp_path / "in.jsonl"
        source.write_bytes(b"[0, 1]\n")
        result = af("run", agent, "--input", source, "--json")
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stderr.decode().strip().splitlines()[-1])
        assert any("1024" in note and "thread" in note for note in summary["notices"]), summary["notices"]

    def test_max_bundle_mb_refuses_a_bundle_that_inflates_past_it(self, example_bundles, tmp_path):
        bundle = example_bundles["classification-agent"]
        source = tmp_path / "in.jsonl"
        source.write_bytes(b"[" + b"0," * 783 + b"0]\n")
        refused = af("run", bundle, "--input", source, "--max-bundle-mb", "1")
        assert refused.returncode == 1 and b"AF4003" in refused.stderr, refused.stderr
        assert af("inspect", bundle, "--max-bundle-mb", "1").returncode == 1
        assert af("run", bundle, "--input", source, "--max-bundle-mb", "64").returncode == 0
