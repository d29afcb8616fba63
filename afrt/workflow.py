"""Runs an agent's declared workflows and returns what each block of records came to.

``initialization`` runs once at start, ``execution`` once per input record and ``shutdown`` once
at the end; steps run in the declared order, a step whose ``when`` guard is false is skipped, and
step arguments reach the step (see docs/steps.md). `WorkflowRunner.run_block` returns an
`afrt.outcomes.Outcomes`: it encodes nothing and writes nothing; the caller decides.

Micro-batching keeps per-record semantics: the network is a pure function of its input, so a
block's outputs are computed in one backend call up front. Then one of two paths runs:

- the batched path, for an execution workflow without guards whose every step has a batch form
  (`afrt.steps.BATCH_STEPS`), when no instrument asks for per-step hooks: each step runs once
  over the whole block. Each batch form has the effects of its step run record after record, and
  no step of such a workflow reads what another record's later step writes, so the outcome is the
  same as record by record;
- the instrumented path otherwise: every record runs the whole workflow in turn, with the guards
  (which see the memory left by the records before) and the per-step hooks.

Both paths report the block, backend and step-time hooks (`afrt.instrument`); `path_taken`
says which path ran, and tests prove the dispatch with it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from afcore.errors import AfError, ExecutionError
from afcore.steps import STEP_DEFS, WORKFLOWS, Step, evaluate, learning_step

from .bus import Message
from .instrument import Instruments
from .messages import encode_event, encode_results
from .outcomes import Outcomes, RecordError
from .records import InputRecord, RecordBlock

if TYPE_CHECKING:
    from .bus import Bus, TokenBucket
    from .state import Identity

__all__ = ["AgentContext", "BatchState", "RecordState", "WorkflowRunner"]

#: a backend call expected to finish sooner than this (seconds) runs inline: handing it to a thread
#: and back costs more (the result waits for the GIL, up to the 5 ms switch interval)
INLINE_CALL_SECONDS = 0.0005
#: the per-step hooks; an instrument that overrides one of them makes blocks take the instrumented path
PER_STEP_HOOKS = ("before_step", "after_step")


@dataclass(slots=True)
class RecordState:
    """What the execution workflow knows about the record it is running for (instrumented path)."""

    record: InputRecord
    vector: np.ndarray | None
    computed: np.ndarray | None = None  # precomputed network output for this record
    compute_error: AfError | None = None
    argmax: int | None = None  # of ``computed``
    peak: float | None = None  # ``computed[argmax]``
    received: bool = False
    output: np.ndarray | None = None
    sent: list[str] = field(default_factory=list)  # topics send_output published it on
    filtered: str | None = None  # the send_output step whose guard was false for it
    error: AfError | None = None


@dataclass(slots=True)
class BatchState:
    """What the batch forms of the execution steps know about a block of records.

    ``alive`` lists the records still running, in order: a record leaves it when one of its steps
    fails (`fail`), and the later steps skip it, as in the instrumented path.
    """

    block: RecordBlock
    computed: np.ndarray | None  # the network's outputs, one row per record
    compute_errors: list[AfError | None] | None  # per record, None when no record failed
    argmaxes: list[int]
    peaks: list[float]
    alive: list[int]
    received: bool = False
    output: bool = False  # process_neural_network ran: ``computed`` is every alive record's output
    failed: dict[int, AfError] = field(default_factory=dict)
    sent: list[tuple[str, list[int]]] = field(default_factory=list)  # (topic, records) to publish

    def fail(self, index: int, error: AfError) -> None:
        """Stop record ``index`` with ``error`` (`prune` removes it from ``alive``)."""
        self.failed[index] = error

    def prune(self) -> None:
        """Drop the failed records from ``alive``."""
        if self.failed:
            self.alive = [i for i in self.alive if i not in self.failed]


@dataclass
class AgentContext:
    """Everything a step may touch for one agent replica.

    Args:
        agent: the loaded backend agent (``infer``, ``name``, ``version``, ``input_size`` ...).
        identity: the replica's identity; ``agent_id`` derives from it.
        state_dir: the replica's state directory, or None (ephemeral: nothing is written).
        bus: the swarm bus, or None outside a swarm.
        swarm: the swarm's name.
        disk_bytes: the ``disk_mb`` budget of ``save_state`` in bytes, or None.
        bucket: rate-limits what the replica publishes, or None.
        instrument: an `afrt.Instrument` (or several, as `Instruments`), or None.
    """

    agent: Any
    identity: Identity
    state_dir: Any = None
    bus: Bus | None = None
    swarm: str = "default"
    replica: int = 0
    disk_bytes: int | None = None
    bucket: TokenBucket | None = None
    instrument: Any = None
    network_ready: bool = False
    connected: bool = False
    memory: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None
    #: lifecycle events to publish after the current step or block: (topic, event)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: results to publish after the current block, per topic: (ids, output rows); one message per topic
    results_outbox: dict[str, tuple[list[Any], list[np.ndarray]]] = field(default_factory=dict)
    #: checkpoints made during the current block, written once its outcomes are (see `afrt.swarm`)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: counters reported in the run summary
    stats: dict[str, int] = field(
        default_factory=lambda: {"records": 0, "published": 0, "unpublished": 0, "errors": 0, "filtered": 0,
                                 "checkpoints": 0, "updates": 0}
    )
    #: messages for the user, each said once (e.g. "the execution workflow has no send_output")
    notices: list[str] = field(default_factory=list)
    closed: bool = False
    #: True once the initialization workflow completed (only then does shutdown run)
    initialized: bool = False
    #: defer checkpoints made while records run until their outcomes are written (set by the swarm)
    defer_checkpoints: bool = False
    #: the `afrt.learner.OnlineLearner` of update_weights, made at its first use
    learner: Any = None
    #: the learner state of the restored checkpoint, until the learner takes it
    saved_learner: dict[str, Any] | None = None

    @property
    def agent_id(self) -> str:
        """Return the replica's agent id."""
        return self.identity.agent_id

    def publish(self, topic: str, event: dict[str, Any]) -> None:
        """Queue an event; the runner publishes it after the step (lifecycle) or the block."""
        self.events.append((topic, event))

    def publish_results(self, topic: str, ids: Sequence[Any], outputs: np.ndarray) -> None:
        """Queue results (``outputs`` rows, in the order of ``ids``) for one message on ``topic``."""
        pending = self.results_outbox.get(topic)
        if pending is None:
            pending = self.results_outbox[topic] = ([], [])
        pending[0].extend(ids)
        pending[1].append(outputs)

    def notice(self, text: str) -> None:
        """Record a message for the user, once."""
        if text not in self.notices:
            self.notices.append(text)


class WorkflowRunner:
    """Runs the workflows of one agent replica.

    Args:
        ctx: the replica's context.
        workflows: name -> parsed steps, as in the bundle's manifest.
        executor: where long backend calls run (a thread pool), or None for the loop's default.

    Raises:
        ExecutionError: AF5203 for a step the runtime does not implement, AF5208 for a step in a
            workflow where it cannot run (the compiler reports both first, as AF2020/AF2023).
    """

    def __init__(self, ctx: AgentContext, workflows: Mapping[str, Sequence[Step]], *, executor=None) -> None:
        from .steps import BATCH_STEPS, STEPS, ensure_complete, ensure_known

        ensure_complete()
        if ctx.instrument is not None and not isinstance(ctx.instrument, Instruments):
            ctx.instrument = Instruments([ctx.instrument])
        self.ctx = ctx
        self.workflows = {name: tuple(steps) for name, steps in workflows.items()}
        for name, steps in self.workflows.items():
            for step in steps:
                ensure_known(step)
                _ensure_in_place(name, step, ctx.agent_id)
        self._steps = STEPS
        self._executor = executor
        # seconds per record of recent backend calls (a moving average); the first call runs inline
        self._per_record: float | None = None
        execution = self.workflows.get("execution", ())
        guarded = any(s.guard is not None for s in execution)
        # the batch forms, when every step has one and no guard needs the memory record by record
        self._batched = None if guarded or any(s.name not in BATCH_STEPS for s in execution) else [
            (BATCH_STEPS[s.name], s) for s in execution
        ]
        self.computes = any(s.name == "process_neural_network" for s in execution)
        #: the update_weights step, when the agent learns
        self._learning = learning_step(execution)
        self.publishes = any(s.name == "send_output" for s in execution)
        #: "batched" or "instrumented": the path the last block took
        self.path_taken: str | None = None
        if execution and not self.publishes:
            ctx.notice("the execution workflow has no send_output: no result is published (AF5210 for every record)")

    @property
    def instrument(self) -> Instruments | None:
        """Return the context's instruments, or None when nothing observes this replica."""
        instrument = self.ctx.instrument
        return instrument if instrument else None

    def takes_batched_path(self) -> bool:
        """Return whether `run_block` runs the batch forms (see the module docstring)."""
        instrument = self.instrument
        return self._batched is not None and not (
            instrument is not None and any(instrument.wants(h) for h in PER_STEP_HOOKS))

    async def run_lifecycle(self, name: str) -> None:
        """Run ``initialization`` or ``shutdown`` once (no record), publishing after each step.

        Raises:
            ExecutionError: the first step that fails (the workflow stops there).
        """
        for step in self.workflows.get(name, ()):
            started = time.perf_counter()
            try:
                ran = self._run_step(name, step, None)
            except AfError:
                self._hook("step_timed", name, step, 0, 0, 1, time.perf_counter() - started)
                raise
            self._hook("step_timed", name, step, int(ran), int(not ran), 0, time.perf_counter() - started)
            if ran:
                await self.flush()

    async def run_block(self, block: RecordBlock) -> Outcomes:
        """Run the execution workflow once per record of ``block``, with one backend call.

        Returns:
            The outcome of every record, in block order.
        """
        instrument = self.instrument
        if instrument is not None:
            instrument.block_start(self.ctx, block)
        if self._learning is None or block.targets is None:
            outcomes = await self._run_piece(block)
        else:  # weights may change inside the block: each piece is computed with the weights before it
            parts, rest = [], block
            while len(rest):
                piece, rest = rest.split(self._learning_cut(rest))
                parts.append(await self._run_piece(piece))
            outcomes = Outcomes.concat(parts)
        await self.flush()
        if instrument is not None:
            instrument.block_end(self.ctx, block, outcomes)
        return outcomes

    async def _run_piece(self, block: RecordBlock) -> Outcomes:
        batch = await self._compute(block)
        if self.takes_batched_path():
            self.path_taken = "batched"
            return self._run_batched(batch)
        self.path_taken = "instrumented"
        return self._run_records(batch)

    def _learning_cut(self, block: RecordBlock) -> int:
        """Return how many records of ``block`` run before the weights may next change: up to the one
        that would fill the learner's batch if every labelled record were learnt from. Records that are
        not (a guard, a failure) only delay the update, so it never falls inside a piece."""
        from .steps import step_arg

        learner = self.ctx.learner
        need = (learner.every - learner.pending) if learner is not None else step_arg(self._learning, "every")
        for i, target in enumerate(block.targets):
            if target is not None:
                need -= 1
                if need <= 0:
                    return i + 1
        return len(block)

    async def run_records(self, records: Sequence[InputRecord]) -> list[Any]:
        """Run the execution workflow for ``records`` (lists of values), in order: a convenience for
        tools and tests. Records whose values are not finite numbers fail with AF5231/AF5233.

        Returns:
            One `afrt.outcomes.Outcome` per record, in the order of ``records``.
        """
        block, bad = RecordBlock.from_records(records, self.ctx.agent.input_size)
        found = list(await self.run_block(block)) if len(block) else []
        if bad:
            from .outcomes import Outcome

            for err in bad:
                self.ctx.stats["records"] += 1
                found.append(Outcome(err.seq, err.id, error=self._failure(ExecutionError(err.message, code=err.code))))
            order = {r.seq: i for i, r in enumerate(records)}
            found.sort(key=lambda o: order[o.seq])
        return found

    # the batched path ------------------------------------------------------------------------

    def _run_batched(self, batch: BatchState) -> Outcomes:
        """Run each step's batch form over the records still alive (see the module docstring)."""
        ctx, instrument = self.ctx, self.instrument
        ctx.stats["records"] += len(batch.block)
        for fn, step in self._batched:
            if not batch.alive:
                break
            started = time.perf_counter() if instrument is not None else 0.0
            count, failed_before = len(batch.alive), len(batch.failed)
            try:
                fn(ctx, step, batch)
            except AfError as exc:  # the step fails for every record it ran for
                self._locate(exc, step)
                for i in batch.alive:
                    batch.fail(i, exc)
                batch.alive = []
                self._trap(exc)
            else:
                for i in batch.alive:
                    if i in batch.failed:
                        self._locate(batch.failed[i], step)
                        self._trap(batch.failed[i])
                batch.prune()
            if instrument is not None:
                failed = len(batch.failed) - failed_before
                instrument.step_timed(ctx, "execution", step, count - failed, 0, failed, time.perf_counter() - started)
        self._publish_batch(batch)
        block, failed = batch.block, batch.failed
        outcomes = Outcomes(block.seqs, block.ids, ctx.agent_id, batch.computed)
        if not failed and len(batch.sent) == 1 and len(batch.sent[0][1]) == len(block):
            return outcomes  # the common case: every record published
        published = {i for _, records in batch.sent for i in records}
        for i in range(len(block)):
            if i in failed:
                outcomes.errors[i] = self._failure(failed[i])
            elif i not in published:
                outcomes.errors[i] = self._failure(self._unpublished())
        return outcomes

    def _publish_batch(self, batch: BatchState) -> None:
        """Publish what send_output sent, but not for records that failed in a later step."""
        ctx, ids, outputs, failed = self.ctx, batch.block.ids, batch.computed, batch.failed
        for topic, sent in batch.sent:
            if failed:
                sent = [i for i in sent if i not in failed]
            if len(sent) == len(ids):
                ctx.publish_results(topic, ids, outputs)
            elif sent:
                ctx.publish_results(topic, [ids[i] for i in sent], outputs[sent])
            ctx.stats["published"] += len(sent)

    # the instrumented path -------------------------------------------------------------------

    def _run_records(self, batch: BatchState) -> Outcomes:
        ctx = self.ctx
        block = batch.block
        # a published output is always the record's row of ``computed`` (process_neural_network takes it)
        outcomes = Outcomes(block.seqs, block.ids, ctx.agent_id, batch.computed)
        for i, state in enumerate(_record_states(batch)):
            self._run_record(state)
            if state.error is not None:
                outcomes.errors[i] = self._failure(state.error)
            elif state.sent:
                for topic in state.sent:  # only now: a record that failed later publishes nothing
                    ctx.publish_results(topic, [state.record.id], state.output[None, :])
                ctx.stats["published"] += len(state.sent)
            elif state.filtered is not None:
                outcomes.filtered[i] = state.filtered
                ctx.stats["filtered"] += 1
            else:
                outcomes.errors[i] = self._failure(self._unpublished())
        return outcomes

    def _run_record(self, state: RecordState) -> None:
        ctx, instrument = self.ctx, self.instrument
        ctx.stats["records"] += 1  # before the steps: save_state(every=N) counts this record
        for step in self.workflows.get("execution", ()):
            started = time.perf_counter() if instrument is not None else 0.0
            try:
                ran = self._run_step("execution", step, state)
            except AfError as exc:
                state.error = exc
                if instrument is not None:
                    instrument.step_timed(ctx, "execution", step, 0, 0, 1, time.perf_counter() - started)
                return
            if not ran and step.name == "send_output" and not state.sent:
                state.filtered = step.source or step.name
            if instrument is not None:
                instrument.step_timed(ctx, "execution", step, int(ran), int(not ran), 0, time.perf_counter() - started)

    def _run_step(self, workflow: str, step: Step, state: RecordState | None) -> bool:
        """Run one step (hooks, guard, step); return False when its guard skipped it.

        Raises:
            AfError: the step or its guard failed (located at the step, reported to ``trap``).
        """
        ctx, instrument = self.ctx, self.instrument
        if instrument is not None:
            instrument.before_step(ctx, workflow, step, state)
        try:
            if step.guard is not None and not self._guard(step, state):
                return False
            self._steps[step.name](ctx, step, state)
        except AfError as exc:
            self._locate(exc, step)
            self._trap(exc)
            raise
        if instrument is not None:
            instrument.after_step(ctx, workflow, step, state)
        return True

    def _guard(self, step: Step, state: RecordState | None) -> bool:
        from .steps import resolve_field

        try:
            return bool(evaluate(step.guard, lambda root, path: resolve_field(self.ctx, state, root, path)))
        except ExecutionError as exc:
            raise ExecutionError(
                f"guard of `{step.source}`: {exc.message}", code=exc.code, hint=exc.hint,
                agent=self.ctx.agent_id, span=_span(step),
            ) from None

    # outcomes -----------------------------------------------------------------------------------

    def _failure(self, error: AfError) -> RecordError:
        """Count a failed record and return its error."""
        ctx = self.ctx
        ctx.stats["errors"] += 1
        if ctx.memory is not None:
            ctx.memory["errors"] += 1
        return RecordError(error.code, error.message)

    def _unpublished(self) -> ExecutionError:
        """Return the AF5210 error of a record that ran but whose result was not published."""
        ctx = self.ctx
        ctx.stats["unpublished"] += 1
        why = ("the execution workflow has no send_output" if not self.publishes
               else "the agent is not connected to a swarm (no connect_to_swarm)")
        return ExecutionError(f"result not published: {why}", code="AF5210")

    def _locate(self, exc: AfError, step: Step | None) -> None:
        if isinstance(exc, ExecutionError) and exc.span is None and step is not None:
            exc.span = _span(step)
            exc.agent = exc.agent or self.ctx.agent_id

    def _trap(self, exc: AfError) -> None:
        if self.instrument is not None:
            self.instrument.trap(self.ctx, exc)

    def _hook(self, name: str, *args: Any) -> None:
        instrument = self.instrument
        if instrument is not None:
            getattr(instrument, name)(self.ctx, *args)

    # the backend --------------------------------------------------------------------------------

    async def _compute(self, block: RecordBlock) -> BatchState:
        n = len(block)
        batch = BatchState(block, None, None, [], [], list(range(n)))
        if self.computes and self.ctx.network_ready and n:
            outputs, batch.compute_errors = await self._infer(block.array)
            finite = np.isfinite(outputs).all(axis=1)
            if not finite.all():
                batch.compute_errors = _not_finite(finite, batch.compute_errors)
                outputs = np.where(finite[:, None], outputs, np.float32(0))
            # One vectorized pass for the statistics update_memory keeps (numpy per row costs ~1 µs).
            argmaxes = outputs.argmax(axis=1)
            batch.peaks = outputs[np.arange(n), argmaxes].tolist()
            batch.argmaxes = argmaxes.tolist()
            batch.computed = outputs.astype("<f4", copy=False)  # the wire form of results (a no-op here)
        return batch

    async def _call_backend(self, array: np.ndarray) -> np.ndarray:
        """Run one backend call, inline when it is quick, else in a worker thread."""
        estimate = self._per_record
        started = time.perf_counter()
        try:
            if estimate is None or estimate * len(array) < INLINE_CALL_SECONDS:
                out, seconds, fuel = self._timed(array)
            else:
                loop = asyncio.get_running_loop()
                out, seconds, fuel = await loop.run_in_executor(self._executor, self._timed, array)
        except AfError:
            self._hook("backend_call", len(array), time.perf_counter() - started, None)
            raise
        per_record = seconds / len(array)
        self._per_record = per_record if estimate is None else 0.8 * estimate + 0.2 * per_record
        self._hook("backend_call", len(array), seconds, fuel)
        return out

    def _timed(self, array: np.ndarray) -> tuple[np.ndarray, float, int | None]:
        # Timed where it runs, so that the thread handoff does not count as backend time; the fuel
        # is read right after the call, in the same thread (each replica has its own store).
        agent = self.ctx.agent
        started = time.perf_counter()
        out = agent.infer(array)
        seconds = time.perf_counter() - started
        return out, seconds, getattr(agent, "fuel_used", None) if self.instrument is not None else None

    async def _infer(self, array: np.ndarray) -> tuple[np.ndarray, list[AfError | None] | None]:
        """Return the outputs and, when some record failed, each record's error (None for the others)."""
        try:
            return await self._call_backend(array), None
        except AfError:
            pass
        # One record spoiled the batch: run them one by one so that only the bad ones fail.
        outs = np.zeros((len(array), self.ctx.agent.output_size), dtype=np.float32)
        errors: list[AfError | None] = []
        for i in range(len(array)):
            try:
                outs[i] = (await self._call_backend(array[i : i + 1]))[0]
                errors.append(None)
            except AfError as exc:
                errors.append(exc)
                self._trap(exc)
        return outs, errors

    # publishing ---------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Publish the queued events and results in order, honouring the bandwidth limit and backpressure."""
        ctx = self.ctx
        outbox = [Message(topic, ctx.agent_id, encode_event(event)) for topic, event in ctx.events]
        ctx.events = []
        if ctx.results_outbox:
            for topic, (ids, rows) in ctx.results_outbox.items():
                outputs = rows[0] if len(rows) == 1 else np.concatenate(rows)
                outbox.append(Message(topic, ctx.agent_id, encode_results(ids, outputs)))
            ctx.results_outbox = {}
        if not outbox or ctx.bus is None or not ctx.connected:
            return
        if ctx.bucket is not None:
            await ctx.bucket.consume(sum([len(m.payload) for m in outbox]))
        await ctx.bus.publish_many(outbox)
        if self.instrument is not None:
            for message in outbox:
                self.instrument.message_sent(ctx, message)


def _ensure_in_place(workflow: str, step: Step, agent_id: str) -> None:
    definition = STEP_DEFS[step.name]
    if workflow in WORKFLOWS and workflow not in definition.workflows:
        places = " or ".join(sorted(definition.workflows))
        raise ExecutionError(
            f"step `{step.name}` cannot run in the `{workflow}` workflow: it belongs in {places}",
            code="AF5208", agent=agent_id, span=_span(step),
            hint="recompile the agent: `af validate` reports this as AF2023",
        )


def _not_finite(finite: np.ndarray, errors: list[AfError | None] | None) -> list[AfError | None]:
    """Mark the records whose output holds NaN or infinity (they never reach memory or a checkpoint)."""
    errors = list(errors) if errors is not None else [None] * len(finite)
    for i in np.flatnonzero(~finite).tolist():
        if errors[i] is None:
            errors[i] = ExecutionError(
                "the network's output for this record is not finite (NaN or infinity)", code="AF5211",
                hint="check the weights for NaN or huge values and the scale of the input",
            )
    return errors


def _record_states(batch: BatchState) -> Iterator[RecordState]:
    """Yield one `RecordState` per record of ``batch``, in order (for the instrumented path)."""
    block, computed, errors = batch.block, batch.computed, batch.compute_errors
    for i in range(len(block)):
        state = RecordState(block.record(i), block.array[i])
        if errors is not None and errors[i] is not None:
            state.compute_error = errors[i]
        elif computed is not None:
            state.computed, state.argmax, state.peak = computed[i], batch.argmaxes[i], batch.peaks[i]
        yield state


def _span(step: Step):
    if not step.span:
        return None
    from afcore.spans import Span

    try:
        return Span.from_json(dict(step.span))
    except (KeyError, TypeError, ValueError):
        return None

