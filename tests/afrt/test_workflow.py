"""The workflow runner: declared order, guards per record, micro-batching that keeps per-record
semantics, outcomes as values, and the dispatch between its two paths."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from swarm_testkit import FakeAgent, steps

from afcore.steps import Binary, Const, Field, Step
from afrt.bus import MemoryBus
from afrt.jsonl import encode_outcomes
from afrt.outcomes import Outcomes
from afrt.records import InputRecord, RecordBlock
from afrt.state import Identity
from afrt.workflow import AgentContext, WorkflowRunner

INIT = ["load_neural_network", "initialize_memory", "connect_to_swarm", "register_capabilities"]


def records(n: int, size: int = 4, start: int = 0) -> list[InputRecord]:
    return [InputRecord(i, f"r{i}", [float(i)] * size, i + 1) for i in range(start, start + n)]


def make(execution, *, init=INIT, shutdown=(), instrument=None, bus=True):
    agent = FakeAgent(workflows={"initialization": init, "execution": execution, "shutdown": list(shutdown)})
    ctx = AgentContext(agent=agent, identity=Identity.generate("fake"), bus=MemoryBus() if bus else None,
                       instrument=instrument)
    return agent, ctx, WorkflowRunner(ctx, agent.workflows)


def run(runner, batches):
    async def main():
        await runner.run_lifecycle("initialization")
        out = []
        for batch in batches:
            out += await runner.run_records(batch)
        return out

    return asyncio.run(main())


EXEC = ["receive_input", "process_neural_network", "update_memory", "send_output"]


class TestOrderAndHooks:
    def test_steps_run_in_declared_order(self):
        events = []

        class Recorder:
            def before_step(self, ctx, workflow, step, record):
                events.append(("before", workflow, step.name))

            def after_step(self, ctx, workflow, step, record):
                events.append(("after", workflow, step.name))

        _, _, runner = make(EXEC, instrument=Recorder())
        run(runner, [records(1)])
        names = [e[2] for e in events if e[0] == "after"]
        assert names == INIT + EXEC

    def test_outputs_equal_float64_reference(self):
        agent, ctx, runner = make(EXEC)
        recs = records(10)
        results = run(runner, [recs])
        x = np.array([r.values for r in recs], dtype=np.float64)
        expected = x @ agent.weight.astype(np.float64)
        got = np.array([r.output for r in results])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert agent.calls[-1] == 10  # one backend call for the batch
        assert all(r.agent == ctx.agent_id for r in results)


def guard(op, field, value):
    return Binary(op, Field(*field), Const(value))


class TestGuards:
    def test_memory_guard_sees_the_records_before_it_in_the_same_batch(self):
        # send_output only for even counts: per-record semantics means records 2, 4, ... publish.
        send = Step("send_output", guard=Binary("==", Binary("%", Field("memory", ("count",)), Const(2)), Const(0)))
        execution = ["receive_input", "process_neural_network", "update_memory", send]
        _, _, batched = make(steps({"e": execution})["e"])
        _, _, single = make(steps({"e": execution})["e"])
        in_one = run(batched, [records(6)])
        one_by_one = run(single, [[r] for r in records(6)])
        assert [r.output is not None for r in in_one] == [False, True, False, True, False, True]
        assert [r.output is not None for r in in_one] == [r.output is not None for r in one_by_one]
        # a guard that holds a record back filters it: its own outcome, not an error
        assert in_one[0].error is None and in_one[0].filtered == "send_output"

    def test_output_and_input_guards(self):
        send = Step("send_output", guard=guard(">", ("input", (0,)), 2.5))
        _, _, runner = make(["receive_input", "process_neural_network", send])
        results = run(runner, [records(5)])
        assert [r.output is not None for r in results] == [False, False, False, True, True]
        assert [r.filtered is not None for r in results] == [True, True, True, False, False]

    def test_guard_on_missing_field_fails_that_record(self):
        send = Step("send_output", guard=guard(">", ("output", ("nope",)), 1), source="send_output when output.nope > 1")
        _, _, runner = make(["receive_input", "process_neural_network", send])
        result = run(runner, [records(1)])[0]
        assert result.error[0] == "AF5201" and "output.nope" in result.error[1]

    def test_guarded_out_process_step_does_not_fail_on_a_trap(self):
        process = Step("process_neural_network", guard=guard("!=", ("input", (0,)), 666.0))
        _, _, runner = make(["receive_input", process, "send_output"])
        bad = InputRecord(0, "bad", [666.0] * 4, 1)
        result = run(runner, [[bad]])[0]
        # not processed -> nothing to send: AF5207, not the trap
        assert result.error[0] == "AF5207"


class TestFailuresStayPerRecord:
    def test_trap_fails_only_its_record(self):
        agent, _, runner = make(EXEC)
        recs = records(5)
        recs[2] = InputRecord(2, "trap", [666.0] * 4, 3)
        results = run(runner, [recs])
        assert [r.error[0] if r.error else None for r in results] == [None, None, "AF5001", None, None]
        assert agent.calls[-5:] == [1, 1, 1, 1, 1]  # the batch failed, then one by one

    def test_bad_vectors_fail_alone(self):
        _, _, runner = make(EXEC)
        recs = records(3)
        recs[1] = InputRecord(1, "str", ["x", 1, 2, 3], 2)
        results = run(runner, [recs])
        assert [r.error[0] if r.error else None for r in results] == [None, "AF5233", None]


class TestMissingSteps:
    def test_no_send_output_publishes_nothing_and_says_so_once(self):
        _, ctx, runner = make(["receive_input", "process_neural_network", "update_memory"])
        results = run(runner, [records(3), records(3, start=3)])
        assert all(r.error[0] == "AF5210" for r in results)
        assert sum("no send_output" in n for n in ctx.notices) == 1
        assert ctx.memory["count"] == 6

    def test_no_load_neural_network(self):
        _, _, runner = make(EXEC, init=["initialize_memory", "connect_to_swarm"])
        assert run(runner, [records(1)])[0].error[0] == "AF5205"

    def test_no_receive_input(self):
        _, _, runner = make(["process_neural_network", "send_output"])
        assert run(runner, [records(1)])[0].error[0] == "AF5206"

    def test_no_connect_to_swarm_publishes_nothing(self):
        _, ctx, runner = make(EXEC, init=["load_neural_network", "initialize_memory"])
        results = run(runner, [records(2)])
        assert all(r.error[0] == "AF5210" for r in results)
        assert any("connect_to_swarm" in n for n in ctx.notices)

    @pytest.mark.parametrize("init, execution", [(["send_output"], EXEC), (INIT, EXEC + ["cleanup_resources"])])
    def test_step_out_of_place_is_refused_before_anything_runs(self, init, execution):
        # the compiler reports it first (AF2023); a bundle from elsewhere is refused at start
        with pytest.raises(Exception) as info:
            make(execution, init=init)
        assert info.value.code == "AF5208"

    def test_a_step_without_implementation_refuses_to_start(self, monkeypatch):
        import afrt.steps as impl

        monkeypatch.delitem(impl.STEPS, "update_memory")
        with pytest.raises(Exception) as info:
            make(EXEC)
        assert info.value.code == "AF9999" and "update_memory" in info.value.message

    def test_unknown_step_is_refused(self):
        with pytest.raises(Exception) as info:
            make(["receive_input", "fly_to_the_moon"])
        assert info.value.code == "AF5203"


WINDOW = Step("update_memory", {"window": 2})
BATCH_CASES = {
    "reference": (EXEC, INIT),
    "window": (["receive_input", "process_neural_network", WINDOW, "send_output"], INIT),
    "bad window": (["receive_input", "process_neural_network", Step("update_memory", {"window": 0}), "send_output"], INIT),
    "topic": (["receive_input", "process_neural_network", "update_memory", Step("send_output", {"topic": "x.out"})], INIT),
    "fails after send_output": (["receive_input", "process_neural_network", "send_output",
                                 Step("update_memory", {"window": 0})], INIT),
    "two topics": (["receive_input", "process_neural_network", "send_output", Step("send_output", {"topic": "x.out"}),
                    "update_memory"], INIT),
    "no send_output": (EXEC[:3], INIT),
    "no receive_input": (EXEC[1:], INIT),
    "no process": (["receive_input", "update_memory", "send_output"], INIT),
    "no network": (EXEC, ["initialize_memory", "connect_to_swarm"]),
    "not connected": (EXEC, ["load_neural_network", "initialize_memory"]),
}


class TestBatchForms:
    """Workflows whose steps all have batch forms run step by step over the batch; the outcome
    must equal the record-by-record path's, record for record."""

    def _pair(self, execution, init):
        batched_agent, batched_ctx, batched = make(execution, init=init)
        # An instrument with a per-step hook forces the instrumented path.
        general_agent, general_ctx, general = make(execution, init=init, instrument=StepCounter())
        general_ctx.identity = batched_ctx.identity
        general_agent.weight = batched_agent.weight
        return (batched_ctx, batched), (general_ctx, general)

    @staticmethod
    def _messages(ctx, runner, batches):
        subscriptions = {topic: ctx.bus.subscribe(topic) for topic in ("task.completion", "x.out")}
        results = run(runner, batches)
        sent = {}
        for topic, channel in subscriptions.items():
            sent[topic] = []
            while channel.statistics().current_buffer_used:
                sent[topic].append(channel.receive_nowait().payload)
        return results, sent

    @pytest.mark.parametrize("case", list(BATCH_CASES))
    def test_same_outcomes_memory_and_messages(self, case):
        execution, init = BATCH_CASES[case]
        (bctx, batched), (gctx, general) = self._pair(execution, init)
        assert batched.takes_batched_path() and not general.takes_batched_path()
        batch = records(9)
        batch[4] = InputRecord(4, "trap", [666.0] * 4, 5)
        batch[6] = InputRecord(6, "str", ["x", 1, 2, 3], 7)
        got, got_sent = self._messages(bctx, batched, [batch[:5], batch[5:]])
        want, want_sent = self._messages(gctx, general, [batch[:5], batch[5:]])
        assert batched.path_taken == "batched" and general.path_taken == "instrumented"
        assert [lines(r) for r in got] == [lines(r) for r in want]
        assert [r.error for r in got] == [r.error for r in want]
        assert got_sent == want_sent
        assert bctx.stats == gctx.stats and bctx.notices == gctx.notices
        bmem, gmem = dict(bctx.memory or {}), dict(gctx.memory or {})
        np.testing.assert_array_equal(bmem.pop("last_output", None), gmem.pop("last_output", None))
        assert bmem == gmem

    def test_a_record_failing_after_send_output_publishes_nothing(self):
        (bctx, batched), _ = self._pair(*BATCH_CASES["fails after send_output"])
        results, sent = self._messages(bctx, batched, [records(4)])
        assert [r.error[0] for r in results] == ["AF5204"] * 4
        assert sent["task.completion"] == [] and bctx.stats["published"] == 0

    def test_a_batch_of_bad_records_only(self):
        # No record of the batch reaches the backend: no outputs at all, only error results.
        (bctx, batched), (gctx, general) = self._pair(EXEC, INIT)
        batch = [InputRecord(i, f"s{i}", ["x", 1, 2, 3], i + 1) for i in range(3)]
        got, want = run(batched, [batch]), run(general, [batch])
        assert [lines(r) for r in got] == [lines(r) for r in want]
        assert [r.error[0] for r in got] == ["AF5233"] * 3
        assert bctx.stats == gctx.stats

    def test_guards_or_steps_without_batch_form_run_record_by_record(self):
        guarded = Step("send_output", guard=Binary(">", Field("output", ("max",)), Const(0.5)))
        assert not make(["receive_input", "process_neural_network", guarded])[2].takes_batched_path()
        assert not make(EXEC + [Step("save_state", {"every": 2})])[2].takes_batched_path()


def lines(outcome) -> bytes:
    """The output line `af run` writes for one outcome."""
    block = Outcomes([outcome.seq], [outcome.id], outcome.agent,
                     outcome.output[None, :] if outcome.output is not None else None,
                     {0: outcome.error} if outcome.error else {}, {0: outcome.filtered} if outcome.filtered else {})
    return encode_outcomes(block)[0]


class StepCounter:
    """An instrument with the per-step hooks: counts them."""

    def __init__(self):
        self.before = self.after = 0

    def before_step(self, ctx, workflow, step, record):
        self.before += 1

    def after_step(self, ctx, workflow, step, record):
        self.after += 1


class BlockCounter:
    """An instrument with only the cheap hooks: counts them."""

    def __init__(self):
        self.blocks = self.ends = self.calls = 0
        self.steps = []

    def block_start(self, ctx, block):
        self.blocks += 1

    def block_end(self, ctx, block, outcomes):
        self.ends += 1

    def backend_call(self, ctx, records, seconds, fuel):
        self.calls += 1

    def step_timed(self, ctx, workflow, step, ran, skipped, failed, seconds):
        self.steps.append((workflow, step.name, ran, skipped, failed))


class TestDispatch:
    """Which of the two paths runs is decided in one place; these tests fail when it is decided wrong."""

    @staticmethod
    def count_calls(monkeypatch):
        import afrt.steps as impl

        calls = {"per_record": 0, "batch": 0}
        for name in ("receive_input", "process_neural_network", "update_memory", "send_output"):
            per_record, batch = impl.STEPS[name], impl.BATCH_STEPS[name]

            def counted_one(ctx, step, state, _fn=per_record):
                calls["per_record"] += 1
                return _fn(ctx, step, state)

            def counted_batch(ctx, step, batch_, _fn=batch):
                calls["batch"] += 1
                return _fn(ctx, step, batch_)

            monkeypatch.setitem(impl.STEPS, name, counted_one)
            monkeypatch.setitem(impl.BATCH_STEPS, name, counted_batch)
        return calls

    def test_no_instrument_runs_each_step_once_per_block(self, monkeypatch):
        calls = self.count_calls(monkeypatch)
        _, _, runner = make(EXEC)
        run(runner, [records(10), records(6, start=10)])
        assert calls == {"per_record": 0, "batch": 4 * 2} and runner.path_taken == "batched"

    def test_cheap_hooks_keep_the_batched_path_and_see_every_block(self, monkeypatch):
        calls = self.count_calls(monkeypatch)
        counter = BlockCounter()
        _, _, runner = make(EXEC, instrument=counter)
        run(runner, [records(10), records(6, start=10)])
        assert calls == {"per_record": 0, "batch": 8}
        assert (counter.blocks, counter.ends, counter.calls) == (2, 2, 2)
        execution = [s for s in counter.steps if s[0] == "execution"]
        assert execution == [("execution", n, 10, 0, 0) for n in EXEC] + [("execution", n, 6, 0, 0) for n in EXEC]

    def test_per_step_hooks_take_the_instrumented_path(self, monkeypatch):
        calls = self.count_calls(monkeypatch)
        counter = StepCounter()
        _, _, runner = make(EXEC, instrument=counter)
        run(runner, [records(10)])
        assert calls == {"per_record": 4 * 10, "batch": 0} and runner.path_taken == "instrumented"
        assert counter.after == len(INIT) + 4 * 10

    def test_guards_take_the_instrumented_path_without_hooks(self, monkeypatch):
        calls = self.count_calls(monkeypatch)
        send = Step("send_output", guard=guard(">", ("input", (0,)), -1.0))
        _, _, runner = make(["receive_input", "process_neural_network", "update_memory", send])
        run(runner, [records(5)])
        assert calls == {"per_record": 4 * 5, "batch": 0}


class TestOutcomes:
    def test_outcomes_are_values_not_lines(self):
        _, ctx, runner = make(EXEC)

        async def main():
            await runner.run_lifecycle("initialization")
            recs = records(3)
            block, _ = RecordBlock.from_records(recs, 4)
            return await runner.run_block(block)

        outcomes = asyncio.run(main())
        assert isinstance(outcomes, Outcomes) and outcomes.all_outputs and outcomes.ids == ["r0", "r1", "r2"]
        assert outcomes.outputs.dtype == np.float32 and outcomes.agent == ctx.agent_id

    @pytest.mark.parametrize("counter", [None, StepCounter()], ids=["batched", "instrumented"])
    def test_a_non_finite_output_is_an_error_and_never_reaches_memory(self, counter):
        agent, ctx, runner = make(EXEC, instrument=counter)
        agent.weight[:] = 1.0
        recs = records(3)
        recs[1] = InputRecord(1, "huge", [3e38] * 4, 2)  # float32 overflows to infinity in the backend
        results = run(runner, [recs])
        assert [r.error[0] if r.error else None for r in results] == [None, "AF5211", None]
        assert ctx.memory["count"] == 2 and np.isfinite(ctx.memory["mean_max"])
        assert np.isfinite(ctx.memory["last_max"]) and ctx.memory["last_id"] == "r2"

class TestInstruments:
    def test_hooks_see_every_step_and_trap(self):
        from afrt.instrument import Instrument, Instruments

        seen = []

        class Spy(Instrument):
            def after_step(self, ctx, workflow, step, record):
                seen.append((workflow, step.name, None if record is None else record.record.id))

            def trap(self, ctx, error):
                seen.append(("trap", error.code, None))

            def message_sent(self, ctx, message):
                seen.append(("sent", message.topic, None))

        _, _, runner = make(EXEC, instrument=Instruments([Spy()]))
        batch = records(2)
        batch[1] = InputRecord(1, "trap", [666.0] * 4, 2)
        run(runner, [batch])
        assert ("execution", "send_output", "r0") in seen
        assert ("trap", "AF5001", None) in seen
        assert ("execution", "process_neural_network", "trap") not in seen
        assert ("sent", "task.completion", None) in seen

    def test_empty_instruments_take_the_batched_path(self):
        from afrt.instrument import Instruments

        agent, _, runner = make(EXEC, instrument=Instruments())
        results = run(runner, [records(3)])
        assert all(r.error is None for r in results) and runner.path_taken == "batched"
