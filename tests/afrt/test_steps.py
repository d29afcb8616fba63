"""Each of the eleven steps: its effect, its arguments, and what happens without it."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pytest
from swarm_testkit import FakeAgent

from afcore.steps import Step
from afrt.bus import MemoryBus
from afrt.records import InputRecord, decode_results
from afrt.state import CHECKPOINT_NAME, load_checkpoint, load_or_create_identity
from afrt.steps import STEPS
from afrt.workflow import AgentContext, WorkflowRunner

INIT = ["load_neural_network", "initialize_memory", "connect_to_swarm", "register_capabilities"]
EXEC = ["receive_input", "process_neural_network", "update_memory", "send_output"]
SHUT = ["save_state", "disconnect_from_swarm", "cleanup_resources"]


def recs(n, start=0):
    return [InputRecord(i, i, [float(i), 1.0, -float(i), 0.5], i + 1) for i in range(start, start + n)]


class Harness:
    def __init__(self, tmp_path=None, *, init=INIT, execution=EXEC, shutdown=SHUT, limits=None, agent=None):
        self.agent = agent or FakeAgent(workflows={"initialization": init, "execution": execution, "shutdown": shutdown},
                                        limits=limits)
        self.bus = MemoryBus("t")
        self.state_dir = tmp_path
        identity = (load_or_create_identity(tmp_path, "fake")[0] if tmp_path is not None
                    else __import__("afrt.state", fromlist=["Identity"]).Identity.generate("fake"))
        disk = (limits or {}).get("disk_mb")
        self.ctx = AgentContext(agent=self.agent, identity=identity, state_dir=tmp_path, bus=self.bus,
                                disk_bytes=int(disk * 2**20) if disk else None)
        self.runner = WorkflowRunner(self.ctx, self.agent.workflows)
        self.lifecycle = self.bus.subscribe("agent.lifecycle")
        self.completion = self.bus.subscribe("task.completion")

    def run(self, *batches, shutdown=True):
        async def main():
            await self.runner.run_lifecycle("initialization")
            out = []
            for b in batches:
                out += await self.runner.run_records(b)
            if shutdown:
                await self.runner.run_lifecycle("shutdown")
            return out

        return asyncio.run(main())

    def drain(self, channel, decode=orjson.loads):
        out = []
        while channel.statistics().current_buffer_used:
            out.append(decode(channel.receive_nowait().payload))
        return out

    def drain_results(self, channel):
        """The (id, output) pairs published on ``channel``, across its messages."""
        return [pair for pairs in self.drain(channel, decode_results) for pair in pairs]


class TestAllStepsExist:
    def test_names(self):
        # the eleven steps of the reference workflows, and update_weights (online learning)
        assert sorted(STEPS) == sorted(INIT + EXEC + SHUT + ["update_weights"])


class TestLifecycleMessages:
    def test_joined_capabilities_left(self):
        h = Harness()
        h.run(recs(2))
        events = h.drain(h.lifecycle)
        assert [e["event"] for e in events] == ["joined", "capabilities", "left"]
        caps = events[1]["capabilities"]
        assert caps["name"] == "fake" and caps["version"] == "1.0"
        assert caps["input"]["shape"] == [None, 4] and caps["output"]["shape"] == [None, 3]
        assert events[2]["records"] == 2

    def test_register_without_connect_publishes_nothing(self):
        h = Harness(init=["load_neural_network", "register_capabilities"])
        h.run()
        assert h.drain(h.lifecycle) == []
        assert any("connect_to_swarm" in n for n in h.ctx.notices)


class TestSendOutput:
    def test_publishes_results_on_task_completion(self):
        h = Harness()
        results = h.run(recs(3))
        published = h.drain_results(h.completion)
        assert [rid for rid, _ in published] == [0, 1, 2]
        for result, (rid, output) in zip(results, published):
            assert result.id == rid and result.agent == h.ctx.agent_id
            assert result.output.tobytes() == output.tobytes()

    def test_topic_argument(self):
        h = Harness(execution=["receive_input", "process_neural_network", Step("send_output", {"topic": "custom.out"})])
        custom = h.bus.subscribe("custom.out")
        h.run(recs(2))
        assert h.drain(h.completion) == [] and len(h.drain_results(custom)) == 2

    def test_bandwidth_limit_delays_publishing(self):
        # 20000 bytes/s with a 100-byte burst and a frozen clock: every byte published beyond the
        # burst is owed to the bucket, and the runner waited before sending.
        from afrt.bus import TokenBucket

        h = Harness()
        h.ctx.bucket = TokenBucket(20000, capacity=100, clock=lambda: 0.0)
        h.run(recs(2), shutdown=False)
        sent = sum(m for m in h.bus.statistics()["bytes"].values())
        assert sent > 100
        assert h.ctx.bucket.delay_for(0) == pytest.approx((sent - 100) / 20000)
        assert h.ctx.bucket.waited > 0


class TestMemory:
    def test_update_memory_statistics_match_numpy(self):
        h = Harness()
        batch = recs(7)
        h.run(batch[:3], batch[3:], shutdown=False)
        x = np.array([r.values for r in batch], dtype=np.float64)
        out = x @ h.agent.weight.astype(np.float64)
        memory = h.ctx.memory
        assert memory["count"] == 7 and memory["last_id"] == 6
        assert memory["mean_max"] == pytest.approx(out.max(axis=1).mean(), rel=1e-5)
        assert memory["last_argmax"] == int(out[-1].argmax())
        counts = np.bincount(out.argmax(axis=1), minlength=3)
        assert memory["class_counts"] == {str(k): int(v) for k, v in enumerate(counts) if v}

    def test_window(self):
        h = Harness(execution=["receive_input", "process_neural_network", Step("update_memory", {"window": 2})])
        batch = recs(5)
        h.run(batch, shutdown=False)
        out = np.array([r.values for r in batch], dtype=np.float64) @ h.agent.weight.astype(np.float64)
        assert h.ctx.memory["mean_max"] == pytest.approx(out.max(axis=1)[-2:].mean(), rel=1e-5)


class TestSaveState:
    def test_shutdown_checkpoint_restores_on_restart(self, tmp_path):
        first = Harness(tmp_path)
        first.run(recs(4))
        second = Harness(tmp_path)
        second.run(recs(2, start=4))
        assert second.ctx.restored["count"] == 4
        assert second.ctx.memory["count"] == 6 and second.ctx.memory["started"] == 2
        payload = load_checkpoint(tmp_path, second.ctx.identity)
        assert payload["memory"]["count"] == 6 and payload["agent_id"] == second.ctx.agent_id

    def test_every_n_records(self, tmp_path):
        h = Harness(tmp_path, execution=EXEC + [Step("save_state", {"every": 3})], shutdown=[])
        h.run(recs(7))
        assert h.ctx.stats["checkpoints"] == 2
        assert load_checkpoint(tmp_path, h.ctx.identity)["memory"]["count"] == 6

    def test_no_save_state_writes_nothing(self, tmp_path):
        h = Harness(tmp_path, shutdown=["disconnect_from_swarm"])
        h.run(recs(3))
        assert not (tmp_path / CHECKPOINT_NAME).exists()

    def test_without_state_dir_nothing_is_written(self):
        h = Harness()
        h.run(recs(1))
        assert h.ctx.stats["checkpoints"] == 0
        assert any("no --state-dir" in n for n in h.ctx.notices)

    def test_disk_limit_is_enforced(self, tmp_path):
        h = Harness(tmp_path, limits={"disk_mb": 0.0001})  # 104 bytes: less than any checkpoint
        with pytest.raises(Exception) as info:
            h.run(recs(1))
        assert info.value.code == "AF5253"
        assert not (tmp_path / CHECKPOINT_NAME).exists()

    def test_a_record_whose_checkpoint_fails_publishes_nothing(self, tmp_path):
        # save_state after send_output: the record fails, so its result must not reach the bus either.
        h = Harness(tmp_path, execution=EXEC + ["save_state"], shutdown=[], limits={"disk_mb": 0.0001})
        results = h.run(recs(3))
        assert [r.error[0] for r in results] == ["AF5253"] * 3
        assert h.drain_results(h.completion) == [] and h.ctx.stats["published"] == 0

    def test_no_initialize_memory_means_no_restore(self, tmp_path):
        Harness(tmp_path).run(recs(4))
        h = Harness(tmp_path, init=["load_neural_network", "connect_to_swarm"])
        h.run(recs(1), shutdown=False)
        assert h.ctx.restored is None and h.ctx.memory["count"] == 1


class TestCleanup:
    def test_cleanup_closes_the_backend(self):
        h = Harness()
        h.run()
        assert h.agent.closed and not h.ctx.network_ready


class TestRestoreAcrossBuilds:
    def test_other_build_of_the_same_agent_restores_with_a_note(self, tmp_path):
        Harness(tmp_path).run(recs(3))
        agent = FakeAgent(workflows={"initialization": INIT, "execution": EXEC, "shutdown": SHUT})
        agent.digest = "0" * 64  # recompiled
        h = Harness(tmp_path, agent=agent)
        h.run(recs(1), shutdown=False)
        assert h.ctx.memory["count"] == 4
        assert any("another build" in n for n in h.ctx.notices)

    def test_checkpoint_of_another_agent_is_refused(self, tmp_path):
        Harness(tmp_path).run(recs(1))
        agent = FakeAgent(workflows={"initialization": INIT, "execution": EXEC, "shutdown": SHUT})
        agent.name = "other"
        with pytest.raises(Exception) as info:
            Harness(tmp_path, agent=agent).run(shutdown=False)
        assert info.value.code == "AF5251"
