"""Runs an agent's declared workflows step by step.

``initialization`` runs once at start, ``execution`` once per input record and ``shutdown`` once
at the end; steps run in the declared order, a step whose ``when`` guard is false is skipped, and
step arguments reach the step (see docs/steps.md).

Micro-batching keeps per-record semantics: the network is a pure function of its input, so a
batch's outputs are computed in one backend call up front (in a worker thread), then every record
runs the whole execution workflow in turn, record after record. A guard therefore sees the memory
left by the records before it, exactly as without batching; ``process_neural_network`` only takes
its record's precomputed output (and its error, if that record alone failed in the backend).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from afcore.errors import AfError, ExecutionError
from afcore.steps import Step, evaluate

from .bus import TOPIC_COMPLETION, Message
from .records import ErrorRecord, InputRecord, stack_inputs

if TYPE_CHECKING:
    from .bus import Bus, TokenBucket
    from .state import Identity

__all__ = ["AgentContext", "RecordState", "Result", "WorkflowRunner"]

#: a backend call expected to finish sooner than this (seconds) runs inline: handing it to a thread
#: and back costs more (the result waits for the GIL, up to the 5 ms switch interval)
INLINE_CALL_SECONDS = 0.0005

#: the execution workflow of the reference example, which the runner runs in one fused loop
FUSED_WORKFLOW = ("receive_input", "process_neural_network", "update_memory", "send_output")

#: the workflows an agent file may declare, in the order they run
WORKFLOWS = ("initialization", "execution", "shutdown")


class Result(NamedTuple):
    """The outcome of one input record: exactly one of ``output`` and ``error`` is set.

    ``line`` is the output record as written by `af run` (JSON with a newline).
    """

    seq: int
    id: Any
    line: bytes
    output: np.ndarray | None = None
    agent: str | None = None
    error: tuple[str, str] | None = None


@dataclass(slots=True)
class RecordState:
    """What the execution workflow knows about the record it is running for."""

    record: InputRecord
    vector: np.ndarray | None  # the input row; None when the batch set it aside
    computed: np.ndarray | None = None  # precomputed network output for this record
    compute_error: AfError | None = None
    argmax: int | None = None  # of ``computed``
    peak: float | None = None  # ``computed[argmax]``
    received: bool = False
    output: np.ndarray | None = None
    published: bytes | None = None
    error: AfError | None = None


def _seq(result: Result) -> int:
    return result.seq


@dataclass(slots=True)
class _Batch:
    """A batch after its backend call: good records with their outputs, and the rejected ones."""

    records: list[InputRecord]
    good: list[InputRecord]
    array: np.ndarray
    bad: list[ErrorRecord]
    outputs: np.ndarray | None = None
    errors: list[AfError | None] = field(default_factory=list)
    argmaxes: list[int] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)

    def states(self) -> list[RecordState]:
        """Return one `RecordState` per record, in order (for the step-by-step path)."""
        states = {r.seq: RecordState(r, None) for r in self.records}
        for err in self.bad:
            states[err.seq].error = ExecutionError(err.message, code=err.code)
        for i, rec in enumerate(self.good):
            state = states[rec.seq]
            state.vector = self.array[i]
            if self.errors[i] is not None:
                state.compute_error = self.errors[i]
            elif self.outputs is not None:
                state.computed, state.argmax, state.peak = self.outputs[i], self.argmaxes[i], self.peaks[i]
        return [states[r.seq] for r in self.records]


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
        instrument: an object with the optional hooks ``before_step``, ``after_step``,
            ``message_sent`` and ``trap``, or None.
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
    outbox: list[Message] = field(default_factory=list)
    #: counters reported in the run summary
    stats: dict[str, int] = field(
        default_factory=lambda: {"records": 0, "published": 0, "unpublished": 0, "errors": 0, "checkpoints": 0}
    )
    #: messages for the user, each said once (e.g. "the execution workflow has no send_output")
    notices: list[str] = field(default_factory=list)
    closed: bool = False
    #: True once the initialization workflow completed (only then does shutdown run)
    initialized: bool = False

    @property
    def agent_id(self) -> str:
        """Return the replica's agent id."""
        return self.identity.agent_id

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue a message; the runner sends the outbox after the step's workflow pass."""
        self.outbox.append(Message(topic, self.agent_id, payload))

    def notice(self, text: str) -> None:
        """Record a message for the user, once."""
        if text not in self.notices:
            self.notices.append(text)


class WorkflowRunner:
    """Runs the workflows of one agent replica.

    Args:
        ctx: the replica's context.
        workflows: name -> parsed steps, as in the bundle's manifest.
        executor: where backend calls run (a thread pool), or None for the loop's default.
    """

    def __init__(self, ctx: AgentContext, workflows: Mapping[str, Sequence[Step]], *, executor=None) -> None:
        from .steps import RECORD_STEPS, STEPS, ensure_known

        self.ctx = ctx
        self.workflows = {name: tuple(steps) for name, steps in workflows.items()}
        for steps in self.workflows.values():
            for step in steps:
                ensure_known(step)
        self._steps = STEPS
        self._record_steps = RECORD_STEPS
        self._executor = executor
        # seconds per record of recent backend calls (a moving average); the first call runs inline
        self._per_record: float | None = None
        execution = self.workflows.get("execution", ())
        # (function, step) pairs of an execution workflow without guards, for the fast path
        self._plain = None if any(s.guard is not None for s in execution) else [
            (STEPS[s.name], s) for s in execution
        ]
        self._fusable = [(s.name, bool(s.args), s.guard) for s in execution] == [
            (name, False, None) for name in FUSED_WORKFLOW
        ]
        self._process_step = execution[1] if self._fusable else None
        self.computes = any(s.name == "process_neural_network" for s in execution)
        self.publishes = any(s.name == "send_output" for s in execution)
        if execution and not self.publishes:
            ctx.notice("the execution workflow has no send_output: no result is published (AF5210 for every record)")

    async def run_lifecycle(self, name: str) -> None:
        """Run ``initialization`` or ``shutdown`` once (no record), then send its messages.

        Raises:
            ExecutionError: the first step that fails (the workflow stops there).
        """
        for step in self.workflows.get(name, ()):
            if step.name in self._record_steps:
                raise ExecutionError(
                    f"step `{step.name}` needs an input record: it belongs in the execution workflow",
                    code="AF5208",
                    agent=self.ctx.agent_id,
                    span=_span(step),
                )
            if self._before(name, step, None) and self._call(name, step, None):
                await self.flush()

    async def run_batch(self, records: Sequence[InputRecord]) -> list[Result]:
        """Run the execution workflow once per record, in order, with one backend call for the batch.

        Returns:
            One `Result` per record, in the order of ``records``.
        """
        batch = await self._compute(records)
        ctx = self.ctx
        if self._fusable and not ctx.instrument and ctx.network_ready and ctx.connected:
            results = self._run_fused(batch)
        else:
            results = [self._run_record(state) for state in batch.states()]
        await self.flush()
        return results

    def _run_fused(self, batch: _Batch) -> list[Result]:
        """The reference execution workflow (receive_input, process_neural_network, update_memory,
        send_output; no guards, no arguments) in one loop: the same effects record by record, in
        the same order, without the per-step dispatch. `tests/afrt/test_workflow.py` checks that
        it matches the general path result for result and memory field for memory field.
        """
        from .records import encode_output, encode_result
        from .steps import fresh_memory

        ctx = self.ctx
        if ctx.memory is None:
            ctx.memory = fresh_memory()
        memory, agent_id, outbox = ctx.memory, ctx.agent_id, ctx.outbox
        count, mean, counts = memory["count"], memory["mean_max"], memory["class_counts"]
        results: list[Result] = []
        last = -1
        outputs, argmaxes, peaks, errors = batch.outputs, batch.argmaxes, batch.peaks, batch.errors
        keys = [str(k) for k in range(outputs.shape[1])] if outputs is not None else []
        append_result, append_message = results.append, outbox.append
        rows = outputs if outputs is not None else ()  # None when no record of the batch was usable
        for i, (rec, error, out, argmax, peak) in enumerate(zip(batch.good, errors, rows, argmaxes, peaks)):
            if error is not None:
                self._locate(error, self._process_step)
                append_result(self._error_result(rec, error))
                continue
            count += 1
            mean += (peak - mean) / count
            key = keys[argmax]
            counts[key] = counts.get(key, 0) + 1
            last = i
            rid = rec.id
            append_message(Message(TOPIC_COMPLETION, agent_id, encode_result(rid, out)))
            append_result(Result(rec.seq, rid, encode_output(rid, out, agent_id), out, agent_id))
        if last >= 0:
            memory.update(count=count, mean_max=mean, last_id=batch.good[last].id, last_output=outputs[last],
                          last_argmax=argmaxes[last], last_max=peaks[last])
        published = sum(1 for r in results if r.error is None)
        ctx.stats["records"] += published
        ctx.stats["published"] += published
        if batch.bad:
            for err in batch.bad:
                results.append(self._error_result(err, ExecutionError(err.message, code=err.code)))
            results.sort(key=_seq)
        return results

    def _error_result(self, rec: Any, error: AfError) -> Result:
        ctx = self.ctx
        ctx.stats["records"] += 1
        ctx.stats["errors"] += 1
        if ctx.memory is not None:
            ctx.memory["errors"] += 1
        err = ErrorRecord(rec.seq, rec.id, error.code, error.message)
        return Result(rec.seq, rec.id, err.encode(), error=(err.code, err.message))

    async def _compute(self, records: Sequence[InputRecord]) -> _Batch:
        array, good, bad = stack_inputs(list(records))
        batch = _Batch(list(records), good, array, bad)
        if self.computes and self.ctx.network_ready and good:
            outputs, batch.errors = await self._infer(array)
            # One vectorized pass for the statistics update_memory keeps (numpy per row costs ~1 µs).
            argmaxes = outputs.argmax(axis=1)
            batch.peaks = outputs[np.arange(len(outputs)), argmaxes].tolist()
            batch.argmaxes = argmaxes.tolist()
            batch.outputs = outputs.astype("<f4", copy=False)  # the wire form of results (a no-op here)
        else:
            batch.errors = [None] * len(good)
        return batch

    async def _call_backend(self, array: np.ndarray) -> np.ndarray:
        """Run one backend call, inline when it is quick, else in a worker thread."""
        estimate = self._per_record
        if estimate is None or estimate * len(array) < INLINE_CALL_SECONDS:
            out, seconds = self._timed(array)
        else:
            loop = asyncio.get_running_loop()
            out, seconds = await loop.run_in_executor(self._executor, self._timed, array)
        per_record = seconds / len(array)
        self._per_record = per_record if estimate is None else 0.8 * estimate + 0.2 * per_record
        return out

    def _timed(self, array: np.ndarray) -> tuple[np.ndarray, float]:
        # Timed where it runs, so that the thread handoff does not count as backend time.
        started = time.perf_counter()
        out = self.ctx.agent.infer(array)
        return out, time.perf_counter() - started

    async def _infer(self, array: np.ndarray) -> tuple[np.ndarray | None, list[AfError | None]]:
        try:
            return await self._call_backend(array), [None] * len(array)
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

    def _run_record(self, state: RecordState) -> Result:
        ctx = self.ctx
        ctx.stats["records"] += 1
        if state.error is None and not ctx.instrument and self._plain is not None:
            # Fast path (no guards, no instrument): the same steps in the same order, minus the hooks.
            step = None
            try:
                for fn, step in self._plain:
                    fn(ctx, step, state)
            except AfError as exc:
                self._locate(exc, step)
                state.error = exc
        elif state.error is None:
            for step in self.workflows.get("execution", ()):
                try:
                    self._before("execution", step, state) and self._call("execution", step, state)
                except AfError as exc:
                    state.error = exc
                    break
        return self._result(state)

    def _result(self, state: RecordState) -> Result:
        rec = state.record
        ctx = self.ctx
        if state.error is None and state.published is None:
            ctx.stats["unpublished"] += 1
            if not self.publishes:
                why = "the execution workflow has no send_output"
            elif not ctx.connected:
                why = "the agent is not connected to a swarm (no connect_to_swarm)"
            else:
                why = "send_output did not run for it (a guard was false)"
            state.error = ExecutionError(f"result not published: {why}", code="AF5210")
        if state.error is not None:
            ctx.stats["errors"] += 1
            if ctx.memory is not None:
                ctx.memory["errors"] += 1
            err = ErrorRecord(rec.seq, rec.id, state.error.code, state.error.message)
            return Result(rec.seq, rec.id, err.encode(), error=(err.code, err.message))
        return Result(rec.seq, rec.id, state.published, output=state.output, agent=ctx.agent_id)

    def _guard(self, step: Step, state: RecordState | None) -> bool:
        try:
            return bool(evaluate(step.guard, self._resolver(state)))
        except ExecutionError as exc:
            raise ExecutionError(
                f"guard of `{step.source}`: {exc.message}", code=exc.code, hint=exc.hint,
                agent=self.ctx.agent_id, span=_span(step),
            ) from None

    def _resolver(self, state: RecordState | None) -> Callable[[str, tuple], Any]:
        from .steps import resolve_field

        return lambda root, path: resolve_field(self.ctx, state, root, path)

    def _before(self, workflow: str, step: Step, state: RecordState | None) -> bool:
        """Call the before_step hook, then return whether the step's guard lets it run."""
        if self.ctx.instrument:
            _hook(self.ctx.instrument, "before_step", self.ctx, workflow, step, state)
        if step.guard is None:
            return True
        try:
            return self._guard(step, state)
        except AfError as exc:
            self._trap(exc)
            raise

    def _call(self, workflow: str, step: Step, state: RecordState | None) -> bool:
        instrument = self.ctx.instrument
        try:
            self._steps[step.name](self.ctx, step, state)
        except AfError as exc:
            self._locate(exc, step)
            self._trap(exc)
            raise
        if instrument:
            _hook(instrument, "after_step", self.ctx, workflow, step, state)
        return True

    def _locate(self, exc: AfError, step: Step | None) -> None:
        if isinstance(exc, ExecutionError) and exc.span is None and step is not None:
            exc.span = _span(step)
            exc.agent = exc.agent or self.ctx.agent_id

    def _trap(self, exc: AfError) -> None:
        if self.ctx.instrument:
            _hook(self.ctx.instrument, "trap", self.ctx, exc)

    async def flush(self) -> None:
        """Publish the queued messages in order, honouring the bandwidth limit and backpressure."""
        ctx = self.ctx
        if not ctx.outbox:
            return
        outbox, ctx.outbox = ctx.outbox, []
        if ctx.bus is None or not ctx.connected:
            return
        if ctx.bucket is not None:
            await ctx.bucket.consume(sum([len(m.payload) for m in outbox]))
        await ctx.bus.publish_many(outbox)
        if ctx.instrument:
            for message in outbox:
                _hook(ctx.instrument, "message_sent", ctx, message)


def _hook(instrument: Any, name: str, *args: Any) -> None:
    hook = getattr(instrument, name, None)
    if hook is not None:
        hook(*args)


def _span(step: Step):
    if not step.span:
        return None
    from afcore.spans import Span

    try:
        return Span.from_json(dict(step.span))
    except (KeyError, TypeError, ValueError):
        return None
