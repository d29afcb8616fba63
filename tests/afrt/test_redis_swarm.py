"""Swarms across processes on Redis Streams: workers, submit, faults, dead letters, status, metrics.

Every test starts its own redis-server on a free 127.0.0.1 port (tests/redis_server.py) and stops
it. Workers and submits are separate processes (tests/afrt/redis_swarm_kit.py). Each run ends
with the same checks: every id exactly once, in input order, outputs equal to the float64
reference, and nothing left pending in Redis.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from redis_server import RedisServer, free_port
from redis_swarm_kit import finish, lines_of, start_submit, start_worker, stop_workers, wait_for_lines, write_inputs

from afcore.errors import BusError, ExecutionError, UsageError
from afrt.submit import status, submit
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
AGENT = "xor-agent"
SWARM = "test"


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    """The xor example without its 1 Mbit/s bandwidth limit: these tests are about the transport, and
    a worker's results keep to the limit (tests/cli/test_swarm_commands.py::TestBandwidth)."""
    import re

    import afc

    source = tmp_path_factory.mktemp("xor") / "xor.af"
    source.write_text(re.sub(r"network_bandwidth_mbps: [0-9.]+", "network_bandwidth_mbps: 10000",
                             (ROOT / "examples" / "xor.af").read_text()))
    return afc.compile_file(source, output=source.with_suffix(".afb")), afc.load_agent_file(source).spec().network


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        yield server


def check_output(path: Path, x: np.ndarray, network, *, dead: set[int] = frozenset()) -> list[dict]:
    """Every id exactly once, in input order, outputs equal to the float64 reference."""
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["id"] for r in records] == [f"r{i}" for i in range(len(x))]
    good = [i for i in range(len(x)) if i not in dead]
    outputs = np.array([records[i]["output"] for i in good])
    np.testing.assert_allclose(outputs, forward64(network, x[good]), rtol=1e-5, atol=1e-6)
    return records


def used_memory(server: RedisServer) -> int:
    return int(server.cli("info", "memory").split("used_memory:")[1].split()[0])


def nothing_pending(server: RedisServer) -> dict:
    info = asyncio.run(status(server.url, SWARM))
    for queue in info["queues"]:
        assert (queue["length"], queue["pending"], queue["lag"]) == (0, 0, 0), queue
    return info


class TestSwarm:
    def test_two_workers_20000_records_each_once_equal_to_reference(self, server, xor, tmp_path):
        bundle, network = xor
        x = write_inputs(tmp_path / "in.jsonl", 20_000, 2)
        write_inputs(tmp_path / "warm.jsonl", 100, 2)
        workers = [start_worker(server.url, bundle, SWARM) for _ in range(2)]
        wait_for_members(server, 2)
        finish(start_submit(server.url, SWARM, AGENT, tmp_path / "warm.jsonl", tmp_path / "warm.out"))
        before = used_memory(server)  # with both workers connected
        summary = finish(start_submit(server.url, SWARM, AGENT, tmp_path / "in.jsonl", tmp_path / "out.jsonl"))
        assert (summary["records"], summary["results"], summary["errors"]) == (20_000, 20_000, 0)
        check_output(tmp_path / "out.jsonl", x, network)
        info = nothing_pending(server)
        assert sorted(m["state"] for m in info["members"]) == ["serving", "serving"]
        # Streams stay bounded: acknowledged tasks are gone, the finished submission's results too.
        time.sleep(1.5)  # a trim runs every second
        assert used_memory(server) - before < 256 * 1024, (before, used_memory(server))
        assert "results" not in server.cli("keys", "*")
        done = stop_workers(*workers)
        assert sum(d["records"] for d in done) == 20_100 and all(d["records"] > 0 for d in done)

    def test_same_lines_as_af_run(self, server, example_bundles, tmp_path):
        import afrt

        bundle = example_bundles["classification-agent"]
        good = orjson.loads(open(ROOT / "examples" / "classification-inputs.jsonl", "rb").readline())["input"]
        source = b"\n".join([
            orjson.dumps({"id": "ok", "input": good}), b"", orjson.dumps(good), b'{"id": "short", "input": [1, 2]}',
            b"{not json", b'{"id": [1], "input": []}', orjson.dumps({"id": 7, "input": ["x"] + good[1:]}),
        ]) + b"\n"
        expected = io.BytesIO()
        asyncio.run(afrt.run_jsonl(afrt.load(bundle), io.BytesIO(source), expected, afrt.RunOptions()))
        worker = start_worker(server.url, bundle, SWARM)
        got = io.BytesIO()
        asyncio.run(submit(url=server.url, swarm=SWARM, agent="classification-agent", source=io.BytesIO(source),
                           sink=got, timeout=60))
        stop_workers(worker)

        def without_agent(data: bytes) -> list[dict]:
            return [{k: v for k, v in orjson.loads(line).items() if k != "agent"} for line in data.splitlines()]

        assert without_agent(got.getvalue()) == without_agent(expected.getvalue())
        assert len(got.getvalue().splitlines()) == 6

    def test_priority_high_is_served_before_low(self, server, xor, tmp_path):
        bundle, _ = xor
        write_inputs(tmp_path / "low.jsonl", 3000, 2)
        write_inputs(tmp_path / "high.jsonl", 300, 2, seed=1)
        low = start_submit(server.url, SWARM, AGENT, tmp_path / "low.jsonl", tmp_path / "low.out", priority="low")
        wait_for_pending(server, 47)  # task entries of 64 records
        high = start_submit(server.url, SWARM, AGENT, tmp_path / "high.jsonl", tmp_path / "high.out",
                            priority="high")
        wait_for_pending(server, 52)
        worker = start_worker(server.url, bundle, SWARM, slow_ms=2)
        finish(high)
        assert lines_of(tmp_path / "low.out") < 3000  # high finished while low still ran
        finish(low)
        stop_workers(worker)


def wait_for_members(server: RedisServer, n: int, timeout: float = 60) -> None:
    """Wait until ``n`` workers serve (each loaded its agent and joined)."""
    deadline = time.monotonic() + timeout
    while sum(m["state"] == "serving" for m in asyncio.run(status(server.url, SWARM))["members"]) < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def wait_for_pending(server: RedisServer, n: int, timeout: float = 30) -> None:
    """Wait until the task streams hold ``n`` entries."""
    deadline = time.monotonic() + timeout
    while sum(q["length"] for q in asyncio.run(status(server.url, SWARM))["queues"]) < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)


class TestFaults:
    """Each fault ends with every id exactly once and nothing left pending."""

    N = 20_000

    def run_with(self, server, xor, tmp_path, fault, *, slow_ms=1.0, workers=2, at=3000):
        bundle, network = xor
        x = write_inputs(tmp_path / "in.jsonl", self.N, 2)
        procs = [start_worker(server.url, bundle, SWARM, slow_ms=slow_ms) for _ in range(workers)]
        wait_for_members(server, workers)
        sub = start_submit(server.url, SWARM, AGENT, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
        wait_for_lines(tmp_path / "out.jsonl", at)
        procs = fault(procs, bundle) or procs
        summary = finish(sub)
        assert summary["records"] == self.N and summary["errors"] == 0
        check_output(tmp_path / "out.jsonl", x, network)
        nothing_pending(server)
        return summary, stop_workers(*[p for p in procs if p.poll() is None])

    def test_kill_9_a_worker(self, server, xor, tmp_path):
        def fault(procs, _):
            procs[0].kill()
            procs[0].wait()
            return procs[1:]

        summary, done = self.run_with(server, xor, tmp_path, fault)
        assert done[0]["redeliveries"] >= 1  # the survivor took the dead worker's tasks

    def test_sigstop_past_the_idle_bound_then_sigcont(self, server, xor, tmp_path):
        def fault(procs, _):
            procs[0].send_signal(signal.SIGSTOP)
            time.sleep(3.5)  # past the idle bound (1 s) and the heartbeat's TTL (3 s)
            members = asyncio.run(status(server.url, SWARM))["members"]
            procs[0].send_signal(signal.SIGCONT)
            assert sorted(m["state"] for m in members) == ["gone", "serving"]

        summary, done = self.run_with(server, xor, tmp_path, fault)
        assert sum(d["redeliveries"] for d in done) >= 1

    def test_restart_redis_with_appendonly(self, server, xor, tmp_path):
        def fault(procs, _):
            server.restart(down_seconds=1.0)

        summary, done = self.run_with(server, xor, tmp_path, fault)
        assert all(d["reconnects"] >= 1 for d in done)

    def test_client_kill_every_connection(self, server, xor, tmp_path):
        def fault(procs, _):
            for _ in range(3):
                server.cli("client", "kill", "type", "normal")
                time.sleep(0.3)

        summary, done = self.run_with(server, xor, tmp_path, fault)
        assert all(d["records"] > 0 for d in done)  # both went on consuming after reconnecting

    def test_add_a_worker_mid_run(self, server, xor, tmp_path):
        def fault(procs, bundle):
            return procs + [start_worker(server.url, bundle, SWARM, slow_ms=1.0)]

        summary, done = self.run_with(server, xor, tmp_path, fault, workers=1, slow_ms=2.0, at=1000)
        assert done[1]["records"] > 0  # the newcomer took work

    def test_sigterm_drains_a_worker(self, server, xor, tmp_path):
        drained = []

        def fault(procs, _):
            procs[0].send_signal(signal.SIGTERM)
            drained.append(finish(procs[0], 60))  # exit 0 with what it held finished and acknowledged
            return procs[1:]

        self.run_with(server, xor, tmp_path, fault)
        assert drained[0]["records"] > 0 and drained[0]["redeliveries"] == 0

    def test_kill_9_submit_then_attach(self, server, xor, tmp_path):
        bundle, network = xor
        x = write_inputs(tmp_path / "in.jsonl", self.N, 2)
        workers = [start_worker(server.url, bundle, SWARM, slow_ms=1.0) for _ in range(2)]
        sid = "attachme"
        sub = start_submit(server.url, SWARM, AGENT, tmp_path / "in.jsonl", tmp_path / "out.jsonl", submission=sid)
        wait_for_total(server, sid)
        wait_for_lines(tmp_path / "out.jsonl", 3000)
        sub.kill()
        sub.wait()
        recorded = int(server.cli("hget", f"af:{SWARM}:submission:{sid}", "written"))
        data = (tmp_path / "out.jsonl").read_bytes()
        first = data.count(b"\n")  # complete lines: a partial last line is cut, as the CLI would
        (tmp_path / "out.jsonl").write_bytes(data[:data.rfind(b"\n") + 1])
        assert recorded <= first < self.N
        with pytest.raises(AssertionError, match="AF5263"):  # fewer lines than recorded: refused
            finish(start_submit(server.url, SWARM, AGENT, tmp_path / "in.jsonl", tmp_path / "x.jsonl", attach=sid,
                                written=recorded - 1))
        summary = finish(start_submit(server.url, SWARM, AGENT, tmp_path / "in.jsonl", tmp_path / "out.jsonl",
                                      attach=sid, written=first))
        assert summary["records"] == self.N - first and not summary["incomplete"]
        check_output(tmp_path / "out.jsonl", x, network)
        nothing_pending(server)
        stop_workers(*workers)

    def test_a_poison_record_is_dead_lettered(self, server, xor, tmp_path):
        bundle, network = xor
        n, poison = 300, 150
        x = write_inputs(tmp_path / "in.jsonl", n, 2, poison_at=poison)
        workers = [start_worker(server.url, bundle, SWARM, idle_ms=500, poison=True) for _ in range(2)]
        sub = start_submit(server.url, SWARM, AGENT, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
        deadline = time.monotonic() + 90
        while sub.poll() is None:  # a supervisor: every worker the poison kills is started again
            assert time.monotonic() < deadline
            workers = [w if w.poll() is None else start_worker(server.url, bundle, SWARM, idle_ms=500, poison=True)
                       for w in workers]
            time.sleep(0.1)
        summary = finish(sub)
        assert summary["error_codes"] == {"AF5260": 1}
        records = check_output(tmp_path / "out.jsonl", x, network, dead={poison})
        assert records[poison]["error"]["code"] == "AF5260"
        dead = server.cli("xrange", f"af:{SWARM}:dead:{AGENT}:normal", "-", "+")
        assert "delivered 3 times" in dead and '"r150"' in dead  # alone: its neighbours got results
        assert asyncio.run(status(server.url, SWARM))["queues"][1]["dead_letters"] == 1
        nothing_pending(server)
        stop_workers(*workers)


def wait_for_total(server: RedisServer, sid: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.cli("hget", f"af:{SWARM}:submission:{sid}", "total").strip() in ("", "-1"):
        assert time.monotonic() < deadline
        time.sleep(0.02)


class TestConnection:
    def test_no_server_gives_af5110_after_bounded_retries(self, tmp_path):
        started = time.monotonic()
        with pytest.raises(BusError) as info:
            asyncio.run(status(f"redis://127.0.0.1:{free_port()}/0", SWARM))
        assert info.value.code == "AF5110" and "no Redis server answers" in info.value.message
        assert time.monotonic() - started < 10

    def test_password_in_the_url(self, tmp_path):
        with RedisServer(tmp_path / "r", password="s3cret") as server:
            assert asyncio.run(status(server.url, SWARM)) == {"swarm": SWARM, "members": [], "queues": []}
            with pytest.raises(BusError) as info:
                asyncio.run(status(f"redis://default:wrong@127.0.0.1:{server.port}/0", SWARM))
            assert info.value.code == "AF5111"

    def test_rediss_with_an_acl_user(self, tmp_path, xor):
        bundle, network = xor
        with RedisServer(tmp_path / "tls", tls=True) as server:
            server.cli("acl", "setuser", "alice", "on", ">wonder", "~*", "&*", "+@all")
            url = server.url_for("alice", "wonder")
            assert url.startswith("rediss://alice:wonder@")
            worker = start_worker(url, bundle, SWARM)
            x = write_inputs(tmp_path / "in.jsonl", 300, 2)
            out = io.BytesIO()
            with open(tmp_path / "in.jsonl", "rb") as source:
                asyncio.run(submit(url=url, swarm=SWARM, agent=AGENT, source=source, sink=out, timeout=60))
            (tmp_path / "out.jsonl").write_bytes(out.getvalue())
            check_output(tmp_path / "out.jsonl", x, network)
            assert stop_workers(worker)[0]["records"] == 300
            with pytest.raises(BusError) as info:
                asyncio.run(status(server.url_for("alice", "wrong"), SWARM))
            assert info.value.code == "AF5111"

    @pytest.mark.parametrize("url", ["http://127.0.0.1:1/", "redis://127.0.0.1:port/0", "redis://127.0.0.1:1/0?db=x"])
    def test_not_a_redis_url(self, url):
        with pytest.raises(UsageError) as info:
            asyncio.run(status(url, SWARM))
        assert info.value.code == "AF5112"

    def test_unknown_priority_and_unknown_attach(self, server):
        with pytest.raises(UsageError) as info:
            asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(b""), sink=io.BytesIO(),
                               priority="urgent"))
        assert info.value.code == "AF5264"
        with pytest.raises(BusError) as info:
            asyncio.run(submit(url=server.url, swarm=SWARM, sink=io.BytesIO(), attach="nosuch"))
        assert info.value.code == "AF5262"


class TestTimeout:
    def test_no_worker_every_record_gets_af5261_with_its_id(self, server):
        out = io.BytesIO()
        source = b'{"id": "a", "input": [0, 1]}\n\n[1, 1]\n'
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(source), sink=out,
                                     timeout=0.5))
        lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
        assert [(r["id"], r["error"]["code"]) for r in lines] == [("a", "AF5261"), (3, "AF5261")]
        assert (summary.timed_out, summary.error_codes) == (2, {"AF5261": 2})

    def test_an_input_that_cannot_be_read_is_af5236(self, server):
        class Broken(io.RawIOBase):
            def read1(self, n):
                raise OSError(5, "Input/output error")

        with pytest.raises(ExecutionError) as info:
            asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=Broken(), sink=io.BytesIO()))
        assert info.value.code == "AF5236"


class TestAttach:
    def test_a_line_too_long_is_answered_through_the_results_stream(self, server, monkeypatch):
        import afrt.submit

        monkeypatch.setattr(afrt.submit, "MAX_LINE_BYTES", 40)
        out = io.BytesIO()
        source = b'{"id": "a", "input": [0, 1], "note": "longer than forty bytes"}\n'
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(source), sink=out,
                                     timeout=5))
        assert orjson.loads(out.getvalue())["error"]["code"] == "AF5237" and summary.timed_out == 0

    def test_attach_to_a_submit_killed_before_it_sent_everything(self, server):
        # What a submit killed between two sends leaves: 2 records sent (and answered), total unknown.
        keys = f"af:{SWARM}:submission:half"
        server.cli("hset", keys, "agent", AGENT, "priority", "normal", "sent", "2", "total", "-1", "written", "1")
        lines = b'{"id":"a","output":[0.5],"agent":"w"}\n{"id":"b","output":[0.25],"agent":"w"}\n'
        server.cli("xadd", f"af:{SWARM}:results:half", "*", "n", "0", "d", lines.decode())
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, sink=out, attach="half", timeout=5))
        assert out.getvalue() == lines.split(b"\n", 1)[1]  # the one not yet written, once
        assert summary.incomplete and summary.records == 1


class TestStatusAndMetrics:
    def test_status_shape_metrics_and_a_gone_member(self, server, xor, tmp_path):
        bundle, _ = xor
        port = free_port()
        worker = start_worker(server.url, bundle, SWARM, metrics_port=port)
        source = b'{"id": "a", "input": [0, 1]}\n[1, 1]\n{"id": "bad", "input": [1]}\n'
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(source), sink=out,
                                     timeout=60))
        lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
        assert [r["id"] for r in lines] == ["a", 2, "bad"] and lines[2]["error"]["code"] == "AF5232"
        assert (summary.records, summary.results, summary.errors) == (3, 2, 1)
        info = asyncio.run(status(server.url, SWARM))
        assert sorted(info) == ["members", "queues", "swarm"]
        member = info["members"][0]
        assert sorted(member) == sorted(["agent_id", "agent", "host", "pid", "replicas", "state", "last_heartbeat_s",
                                         "processed", "errors", "key_id", "dropped"])
        assert member["state"] == "serving" and member["pid"] == worker.pid
        assert sorted(info["queues"][0]) == sorted(["agent", "priority", "length", "pending", "lag", "dead_letters"])
        assert [q["priority"] for q in info["queues"]] == ["high", "normal", "low"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'af_records_total{agent="xor-agent",outcome="output",replica="0",swarm="test"} 2.0' in text
        assert 'af_task_latency_seconds_bucket{agent="xor-agent",le="1e-05",swarm="test"}' in text
        assert "af_swarm_members" in text and "af_batch_size_bucket" in text
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        time.sleep(3.5)  # the heartbeat key lives 3 s
        assert asyncio.run(status(server.url, SWARM))["members"][0]["state"] == "gone"


class TestMembership:
    def test_lifecycle_events_of_a_worker_reach_redis_subscribers(self, server, xor):
        from afrt.redisbus import RedisBus

        bundle, _ = xor

        async def main():
            bus = RedisBus(server.url, SWARM)
            events = bus.subscribe("agent.lifecycle", max_buffer_size=100)
            worker = start_worker(server.url, bundle, SWARM)
            seen = []
            while "join" not in seen:
                seen.append(orjson.loads((await asyncio.wait_for(events.receive(), 30)).payload)["event"])
            worker.send_signal(signal.SIGTERM)
            while "leave" not in seen:
                seen.append(orjson.loads((await asyncio.wait_for(events.receive(), 30)).payload)["event"])
            await bus.aclose()
            return seen, worker

        seen, worker = asyncio.run(main())
        finish(worker)
        # connect_to_swarm and register_capabilities published through Redis, then the worker's join;
        # disconnect_from_swarm in the shutdown workflow, then its leave.
        assert seen.index("join") > 0 and seen[-1] == "leave" and len(seen) >= 4, seen

    def test_redis_restarted_without_its_data_workers_go_on(self, tmp_path, xor):
        bundle, network = xor
        with RedisServer(tmp_path / "r", appendonly=False) as server:
            worker = start_worker(server.url, bundle, SWARM)
            x = write_inputs(tmp_path / "a.jsonl", 200, 2)
            finish(start_submit(server.url, SWARM, AGENT, tmp_path / "a.jsonl", tmp_path / "a.out"))
            server.restart(down_seconds=0.5)  # no persistence: the groups are gone
            finish(start_submit(server.url, SWARM, AGENT, tmp_path / "a.jsonl", tmp_path / "b.out"))
            check_output(tmp_path / "b.out", x, network)
            assert stop_workers(worker)[0]["records"] == 400


class TestRedisGone:
    def test_a_worker_whose_redis_never_comes_back_says_af5113_and_exits_1(self, tmp_path, xor):
        bundle, _ = xor
        with RedisServer(tmp_path / "r") as server:
            worker = start_worker(server.url, bundle, SWARM, reconnect_seconds=2)
            write_inputs(tmp_path / "a.jsonl", 300, 2)
            finish(start_submit(server.url, SWARM, AGENT, tmp_path / "a.jsonl", tmp_path / "a.out"))
            server.stop()
            out, err = worker.communicate(timeout=60)
        assert worker.returncode == 1
        assert "error[AF5113]: lost the connection to Redis" in err.decode()
        assert "Traceback" not in err.decode()
