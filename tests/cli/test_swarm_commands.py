"""`af run --bus`, `af submit` and `af swarm status` as a user runs them, against a private
redis-server on a free loopback port (tests/redis_server.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from redis_server import RedisServer

from af.cli import app
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
AF = str(Path(sys.executable).parent / "af")
XOR = ROOT / "examples" / "xor.af"


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def records(tmp_path):
    x = np.random.default_rng(3).random((300, 2), dtype=np.float32)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "input": row.tolist()}) + b"\n" for i, row in enumerate(x)))
    return path, x


def start_worker(server: RedisServer, swarm: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([AF, "run", str(XOR), "--bus", server.url, "--swarm", swarm, "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_member(server: RedisServer, swarm: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = CliRunner().invoke(app, ["swarm", "status", "--bus", server.url, "--swarm", swarm, "--json"])
        assert result.exit_code == 0, result.output
        status = json.loads(result.stdout)
        if any(m["state"] != "gone" for m in status["members"]):
            return status
        time.sleep(0.2)
    pytest.fail("the worker never joined the swarm")


class TestSwarmCommands:
    def test_a_worker_and_a_submit_answer_every_record_in_order(self, server, records, tmp_path):
        path, x = records
        worker = start_worker(server, "cli")
        try:
            status = wait_for_member(server, "cli")
            assert status["swarm"] == "cli" and status["members"][0]["agent"] == "xor-agent"
            out = tmp_path / "out.jsonl"
            submit = subprocess.run([AF, "submit", "--bus", server.url, "--swarm", "cli", "--agent", "xor-agent",
                                     "--input", str(path), "--output", str(out), "--json"],
                                    capture_output=True, timeout=120)
            assert submit.returncode == 0, submit.stderr
            assert submit.stderr.decode().startswith("submission ")
            lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
            assert [r["id"] for r in lines] == [f"r{i}" for i in range(len(x))]
            from afc import load_agent_file

            expected = forward64(load_agent_file(XOR).spec().network, x)
            np.testing.assert_allclose([r["output"] for r in lines], expected, rtol=1e-5, atol=1e-6)
            summary = json.loads(submit.stderr.decode().strip().splitlines()[-1])
            assert (summary["records"], summary["results"], summary["errors"]) == (len(x), len(x), 0)
            status = json.loads(CliRunner().invoke(app, ["swarm", "status", "--bus", server.url, "--swarm", "cli",
                                                         "--json"]).stdout)
            assert set(status) == {"swarm", "members", "queues"}
            assert set(status["members"][0]) == {"agent_id", "agent", "host", "pid", "replicas", "state",
                                                 "last_heartbeat_s", "processed", "errors", "key_id", "dropped"}
            assert all(set(q) == {"agent", "priority", "length", "pending", "lag", "dead_letters"}
                       for q in status["queues"])
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        left = json.loads(err.decode().strip().splitlines()[-1])
        assert left["records"] == len(x)

    def test_usage_and_unreachable_redis(self, tmp_path, records):
        path, _ = records
        both = CliRunner().invoke(app, ["submit", "--bus", "redis://127.0.0.1:1/0", "--swarm", "s"])
        assert both.exit_code == 2 and "AF0935" in both.stderr
        nowhere = subprocess.run([AF, "submit", "--bus", "redis://127.0.0.1:1/0", "--swarm", "s", "--agent", "a",
                                  "--input", str(path), "-o", str(tmp_path / "o.jsonl")], capture_output=True, timeout=60)
        assert nowhere.returncode == 1 and b"AF5110" in nowhere.stderr and b"Traceback" not in nowhere.stderr
        worker_input = CliRunner().invoke(app, ["run", str(XOR), "--bus", "redis://127.0.0.1:1/0", "--input", str(path)])
        assert worker_input.exit_code == 2 and "AF0937" in worker_input.stderr
        metrics = CliRunner().invoke(app, ["run", str(XOR), "--metrics-port", "9999", "--input", str(path)])
        assert metrics.exit_code == 2 and "AF0936" in metrics.stderr


class TestWatch:
    def test_watch_redraws_in_place_until_ctrl_c(self, server):
        import os
        import pty
        import select

        worker = start_worker(server, "watched")
        leader, follower = pty.openpty()
        try:
            wait_for_member(server, "watched")
            watch = subprocess.Popen([AF, "swarm", "watch", "--bus", server.url, "--swarm", "watched"],
                                     stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL)
            os.close(follower)
            seen, deadline = b"", time.monotonic() + 30
            while seen.count(b"swarm watched: members") < 3 and time.monotonic() < deadline:
                if select.select([leader], [], [], 0.5)[0]:
                    seen += os.read(leader, 65536)
            watch.send_signal(signal.SIGINT)
            watch.wait(timeout=30)
        finally:
            os.close(leader)
            worker.send_signal(signal.SIGTERM)
            worker.communicate(timeout=60)
        text = seen.decode(errors="replace")
        assert watch.returncode == 0, text
        # a terminal sees the frame drawn again and again, in place (cursor moves up between frames)
        assert text.count("swarm watched: members") >= 3 and "xor-agent" in text and "\x1b[" in text
        assert "Traceback" not in text


class TestBandwidth:
    def test_a_workers_results_keep_to_network_bandwidth_mbps(self, server, tmp_path):
        """The bytes a worker writes to the results stream go through the agent's token bucket."""
        import re

        slow = tmp_path / "slow.af"
        slow.write_text(re.sub(r"network_bandwidth_mbps: [0-9.]+", "network_bandwidth_mbps: 0.01", XOR.read_text()))
        records = tmp_path / "in.jsonl"
        records.write_bytes(b"".join(orjson.dumps({"id": f"record-{i:04d}", "input": [i % 2, 1]}) + b"\n"
                                     for i in range(60)))
        worker = subprocess.Popen([AF, "run", str(slow), "--bus", server.url, "--swarm", "slow", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for_member(server, "slow")
            started = time.monotonic()
            submit = subprocess.run([AF, "submit", "--bus", server.url, "--swarm", "slow", "--agent", "xor-agent",
                                     "--input", str(records), "-o", str(tmp_path / "out.jsonl")],
                                    capture_output=True, timeout=120)
            took = time.monotonic() - started
            assert submit.returncode == 0, submit.stderr
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        summary = json.loads(err.decode().strip().splitlines()[-1])
        written = (tmp_path / "out.jsonl").stat().st_size  # about the bytes of the results on the wire
        # 0.01 Mbit/s is 1,250 bytes/s with a one-second burst: the rest had to wait
        assert written > 3 * 1250 and summary["bandwidth_wait_seconds"] >= (written - 1250) / 1250 * 0.5
        assert took >= summary["bandwidth_wait_seconds"]
