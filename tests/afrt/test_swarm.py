"""The Python API of the swarm: `async with afrt.Swarm(name)`, replicas, micro-batching, lifecycle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import orjson
import pytest
from swarm_testkit import FakeAgent

from afcore.errors import ExecutionError
from afrt.records import decode_results
from afrt.swarm import Swarm
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


class TestSubmit:
    def test_real_bundle_matches_float64_reference(self, example_bundles):
        import afrt
        from afc import load_agent_file

        network = load_agent_file(ROOT / "examples" / "classification-agent.af").spec().network
        x = np.random.default_rng(1).random((40, 784), dtype=np.float32)

        async def main():
            async with afrt.Swarm("api") as swarm:
                await swarm.start(afrt.load(example_bundles["classification-agent"]), replicas=2)
                return await asyncio.gather(*(swarm.submit(row) for row in x))

        got = np.array(run(main()))
        np.testing.assert_allclose(got, forward64(network, x), rtol=1e-5, atol=1e-5)

    def test_each_record_handled_by_exactly_one_replica(self):
        async def main():
            async with Swarm("s", heartbeat_seconds=None) as swarm:
                results = swarm.bus.subscribe("task.completion", max_buffer_size=10_000)
                group = await swarm.start(FakeAgent(), replicas=4)
                await asyncio.gather(*(swarm.submit([float(i), 0, 0, 1], id=f"r{i}") for i in range(300)))
                seen = []
                while results.statistics().current_buffer_used:
                    message = results.receive_nowait()
                    seen += [(rid, message.sender) for rid, _ in decode_results(message.payload)]
                return seen, group.agent_ids

        seen, agents = run(main())
        assert sorted(rid for rid, _ in seen) == sorted(f"r{i}" for i in range(300))
        assert {sender for _, sender in seen} <= set(agents) and len(set(agents)) == 4

    def test_wrong_length_raises_with_code(self):
        async def main():
            async with Swarm("s") as swarm:
                await swarm.start(FakeAgent())
                await swarm.submit([1.0, 2.0])

        with pytest.raises(ExecutionError) as info:
            run(main())
        assert info.value.code == "AF5232"

    def test_trap_raises_for_that_input_only(self):
        async def main():
            async with Swarm("s") as swarm:
                await swarm.start(FakeAgent())
                ok = await swarm.submit([1.0, 0, 0, 0])
                with pytest.raises(ExecutionError) as info:
                    await swarm.submit([666.0, 0, 0, 0])
                again = await swarm.submit([1.0, 0, 0, 0])
                return ok, again, info.value.code

        ok, again, code = run(main())
        assert code == "AF5001" and np.array_equal(ok, again)


class TestMicroBatching:
    def test_waiting_records_share_a_backend_call(self):
        agent = FakeAgent()

        async def main():
            async with Swarm("s", max_batch=8, batch_wait_ms=50) as swarm:
                await swarm.start(agent)
                await asyncio.gather(*(swarm.submit([float(i), 1, 1, 1]) for i in range(40)))

        run(main())
        calls = agent.calls[1:]  # the first is load_neural_network's warm-up
        assert sum(calls) == 40 and max(calls) == 8 and len(calls) < 40

    def test_max_batch_one_runs_records_alone(self):
        agent = FakeAgent()

        async def main():
            async with Swarm("s", max_batch=1) as swarm:
                await swarm.start(agent)
                await asyncio.gather(*(swarm.submit([float(i), 1, 1, 1]) for i in range(10)))

        run(main())
        assert agent.calls[1:] == [1] * 10


class TestLifecycle:
    def test_joined_capabilities_heartbeat_left(self):
        async def main():
            swarm = Swarm("s", heartbeat_seconds=0.01)
            events = swarm.bus.subscribe("agent.lifecycle")
            await swarm.start(FakeAgent(), replicas=2)
            await asyncio.sleep(0.05)
            await swarm.stop()
            out = []
            while events.statistics().current_buffer_used:
                out.append(orjson.loads(events.receive_nowait().payload))
            return out

        kinds = [e["event"] for e in run(main())]
        assert kinds.count("joined") == 2 and kinds.count("capabilities") == 2 and kinds.count("left") == 2
        assert "heartbeat" in kinds

    def test_limits_come_from_resources(self):
        async def main():
            async with Swarm("s") as swarm:
                group = await swarm.start(FakeAgent(limits={"network_bandwidth_mbps": 8, "disk_mb": 2}))
                return group.contexts[0]

        ctx = run(main())
        assert ctx.bucket.rate == 1_000_000 and ctx.disk_bytes == 2 * 1024 * 1024

    def test_state_dir_gives_each_replica_a_lasting_identity(self, tmp_path):
        async def ids():
            async with Swarm("s") as swarm:
                return (await swarm.start(FakeAgent(), replicas=2, state_dir=tmp_path)).agent_ids

        first, second = run(ids()), run(ids())
        assert first == second and len(set(first)) == 2
        assert (tmp_path / "fake" / "r0" / "checkpoint.afs").exists()

    def test_a_state_dir_in_use_is_refused(self, tmp_path):
        async def main():
            async with Swarm("a") as first:
                await first.start(FakeAgent(), state_dir=tmp_path)
                async with Swarm("b") as second:
                    await second.start(FakeAgent(), state_dir=tmp_path)

        with pytest.raises(Exception) as info:
            run(main())
        assert info.value.code == "AF5255"

        async def again():  # the lock went with the first swarm
            async with Swarm("c") as swarm:
                return (await swarm.start(FakeAgent(), state_dir=tmp_path)).agent_ids

        assert len(run(again())) == 1


class TestInstruments:
    def test_a_raising_instrument_is_dropped_and_records_still_succeed(self):
        from afrt.instrument import Instrument

        class Broken(Instrument):
            calls = 0

            def before_step(self, ctx, workflow, step, record):
                Broken.calls += 1
                raise RuntimeError("observer bug")

        async def main():
            async with Swarm("s", heartbeat_seconds=None, instrument=Broken()) as swarm:
                await swarm.start(FakeAgent(), replicas=1)
                return [await swarm.submit([float(i), 0, 0, 1], id=f"r{i}") for i in range(5)]

        outputs = run(main())
        assert len(outputs) == 5
        assert Broken.calls == 1
