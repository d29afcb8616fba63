"""Runs an agent's declared workflows step by step.

``initialization`` runs once at start, ``execution`` once per input record and ``shutdown`` once
at the end; steps run in the declared order, a step whose ``when`` guard is false is skipped, and
step arguments reach the step (see docs/steps.md).

Micro-batching keeps per-record semantics: the network is a pure function of its input, so a
batch's outputs are computed in one backend call up front, then every record runs the whole
execution workflow in turn, record after record. A guard therefore sees the memory left by the
records before it, exactly as without batching; ``process_neural_network`` only takes its
record's precomputed output (and its error, if that record alone failed in the backend).

An execution workflow without guards whose every step has a batch form (`afrt.steps.BATCH_STEPS`)
runs step after step over the whole batch instead: each batch form has the effects of its step
run record after record, and no step of such a workflow reads what another record's later step
writes, so the outcome is the same without a Python call per record and step.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from afcore.errors import AfError, ExecutionError
from afcore.steps import Step, evaluate

from .bus import Message
from .records import ErrorRecord, InputRecord, RecordBlock, encode_results

if TYPE_CHECKING:
    from .bus import Bus, TokenBucket
    from .state import Identity

__all__ = ["AgentContext", "BatchState", "RecordState", "Result", "Results", "WorkflowRunner"]

#: a backend call expected to finish sooner than this (seconds) runs inline: handing it to a thread
#: and back costs more (the result waits for the GIL, up to the 5 ms switch interval)
INLINE_CALL_SECONDS = 0.0005

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
    published: bytes | None = None  # the output line, once send_output ran
    sent: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (topic, output) to publish
    error: AfError | None = None


@dataclass(slots=True)
class Results:
    """The outcomes of a batch of records, in record order: one output line per record.

    Args:
        seqs, ids: the records' sequence numbers and ids.
        lines: each record's output or error line, as `af run` writes it.
        agent: the agent id of the replica that ran them.
        outputs: row ``i`` is record ``i``'s output, unless ``i`` is in ``errors``.
        errors: record index -> (code, message) of the records that failed.
    """

    seqs: list[int]
    ids: list[Any]
    lines: list[bytes]
    agent: str | None = None
    outputs: np.ndarray | None = None
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.seqs)

    def __iter__(self) -> Iterator[Result]:
        for i, (seq, rid, line) in enumerate(zip(self.seqs, self.ids, self.lines)):
            error = self.errors.get(i)
            if error is None:
                yield Result(seq, rid, line, self.outputs[i], self.agent)
            else:
                yield Result(seq, rid, line, error=error)

    @classmethod
    def of(cls, results: Sequence[Result], agent: str | None = None) -> Results:
        """Gather per-record results (in record order) into one `Results`."""
        errors = {i: r.error for i, r in enumerate(results) if r.error is not None}
        outputs = None
        if len(errors) < len(results):
            width = next(len(r.output) for r in results if r.error is None)
            outputs = np.zeros((len(results), width), np.float32)
            for i, r in enumerate(results):
                if r.error is None:
                    outputs[i] = r.output
        return cls([r.seq for r in results], [r.id for r in results], [r.line for r in results],
                   agent, outputs, errors)


@dataclass(slots=True)
class BatchState:
    """What the batch forms of the execution steps know about a batch of records.

    ``alive`` lists the records still running, in order: a record leaves it when one of its steps
    fails (`fail`), and the later steps skip it, as in the record-by-record path.
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
    lines: list[bytes | None] = field(default_factory=list)  # output lines of the published records
    sent: list[tuple[str, list[int]]] = field(default_factory=list)  # (topic, records) to publish

    def fail(self, index: int, error: AfError) -> None:
        """Stop record ``index`` with ``error`` (the caller removes it from ``alive``)."""
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
    #: results waiting for the next flush, per topic: (ids, output rows); one message per topic
    results_outbox: dict[str, tuple[list[Any], list[np.ndarray]]] = field(default_factory=dict)
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

    def publish_results(self, topic: str, ids: Sequence[Any], outputs: np.ndarray) -> None:
        """Queue results (``outputs`` rows, in the order of ``ids``) for one message on ``topic``.

        The results of one batch travel together (`afrt.records.encode_results`).
        """
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
        executor: where backend calls run (a thread pool), or None for the loop's default.
    """

    def __init__(self, ctx: AgentContext, workflows: Mapping[str, Sequence[Step]], *, executor=None) -> None:
        from .steps import BATCH_STEPS, RECORD_STEPS, STEPS, ensure_known

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
        guarded = any(s.guard is not None for s in execution)
        # (function, step) pairs of an execution workflow without guards, for the fast path
        self._plain = None if guarded else [(STEPS[s.name], s) for s in execution]
        # the batch forms, when every step has one (see the module docstring)
        self._batched = None if guarded or any(s.name not in BATCH_STEPS for s in execution) else [
            (BATCH_STEPS[s.name], s) for s in execution
        ]
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

    async def run_block(self, block: RecordBlock) -> Results:
        """Run the execution workflow once per record of ``block``, with one backend call.

        Returns:
            The outcome of every record, in block order.
        """
        batch = await self._compute(block)
        ctx = self.ctx
        if self._batched is not None and not ctx.instrument:
            ctx.stats["records"] += len(block)
            results = self._run_batched(batch)
        else:
            results = Results.of([self._run_record(state) for state in _record_states(batch)], ctx.agent_id)
        await self.flush()
        return results

    async def run_batch(self, records: Sequence[InputRecord]) -> list[Result]:
        """Run the execution workflow once per record, in order, with one backend call for the batch.

        Records whose values are not finite numbers fail with their AF5231/AF5233 error.

        Returns:
            One `Result` per record, in the order of ``records``.
        """
        block, bad = RecordBlock.from_records(records, self.ctx.agent.input_size)
        results = list(await self.run_block(block)) if len(block) else []
        if bad:
            for err in bad:
                self.ctx.stats["records"] += 1
                results.append(self._failure(err.seq, err.id, ExecutionError(err.message, code=err.code)))
            order = {r.seq: i for i, r in enumerate(records)}
            results.sort(key=lambda r: order[r.seq])
        return results

    def _run_batched(self, batch: BatchState) -> Results:
        """Run each step's batch form over the records still alive (see the module docstring)."""
        ctx = self.ctx
        for fn, step in self._batched:
            if not batch.alive:
                break
            try:
                fn(ctx, step, batch)
            except AfError as exc:  # the step fails for every record it ran for
                self._locate(exc, step)
                for i in batch.alive:
                    batch.fail(i, exc)
                batch.alive = []
            else:
                for i in batch.alive:
                    if i in batch.failed:
                        self._locate(batch.failed[i], step)
                batch.prune()
        self._publish_batch(batch)
        block, lines = batch.block, batch.lines
        if not batch.failed and len(batch.alive) == len(block) and all([line is not None for line in lines]):
            return Results(block.seqs, block.ids, lines, ctx.agent_id, batch.computed)
        errors: dict[int, tuple[str, str]] = {}
        out: list[bytes] = []
        for i, line in enumerate(lines):
            error = batch.failed.get(i)
            if error is None and line is None:
                error = self._unpublished()
            if error is None:
                out.append(line)
                continue
            result = self._failure(block.seqs[i], block.ids[i], error)
            errors[i] = result.error
            out.append(result.line)
        return Results(block.seqs, block.ids, out, ctx.agent_id, batch.computed, errors)

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

    def _failure(self, seq: int, rid: Any, error: AfError) -> Result:
        """Count a failed record and return its error result."""
        ctx = self.ctx
        ctx.stats["errors"] += 1
        if ctx.memory is not None:
            ctx.memory["errors"] += 1
        err = ErrorRecord(seq, rid, error.code, error.message)
        return Result(seq, rid, err.encode(), error=(err.code, err.message))

    def _unpublished(self) -> ExecutionError:
        """Return the AF5210 error of a record that ran but whose result was not published."""
        ctx = self.ctx
        ctx.stats["unpublished"] += 1
        if not self.publishes:
            why = "the execution workflow has no send_output"
        elif not ctx.connected:
            why = "the agent is not connected to a swarm (no connect_to_swarm)"
        else:
            why = "send_output did not run for it (a guard was false)"
        return ExecutionError(f"result not published: {why}", code="AF5210")

    async def _compute(self, block: RecordBlock) -> BatchState:
        n = len(block)
        batch = BatchState(block, None, None, [], [], list(range(n)), lines=[None] * n)
        if self.computes and self.ctx.network_ready and n:
            outputs, batch.compute_errors = await self._infer(block.array)
            # One vectorized pass for the statistics update_memory keeps (numpy per row costs ~1 µs).
            argmaxes = outputs.argmax(axis=1)
            batch.peaks = outputs[np.arange(n), argmaxes].tolist()
            batch.argmaxes = argmaxes.tolist()
            batch.computed = outputs.astype("<f4", copy=False)  # the wire form of results (a no-op here)
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

    def _run_record(self, state: RecordState) -> Result:
        ctx = self.ctx
        ctx.stats["records"] += 1  # before the steps: save_state(every=N) counts this record
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
        if state.error is None and state.published is None:
            state.error = self._unpublished()
        if state.error is not None:
            return self._failure(rec.seq, rec.id, state.error)
        for topic, output in state.sent:  # only now: a record that failed later publishes nothing
            self.ctx.publish_results(topic, [rec.id], output[None, :])
        self.ctx.stats["published"] += len(state.sent)
        return Result(rec.seq, rec.id, state.published, output=state.output, agent=self.ctx.agent_id)

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
        if ctx.results_outbox:
            for topic, (ids, rows) in ctx.results_outbox.items():
                outputs = rows[0] if len(rows) == 1 else np.concatenate(rows)
                ctx.outbox.append(Message(topic, ctx.agent_id, encode_results(ids, outputs)))
            ctx.results_outbox = {}
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


def _record_states(batch: BatchState) -> Iterator[RecordState]:
    """Yield one `RecordState` per record of ``batch``, in order (for the record-by-record path)."""
    block, computed, errors = batch.block, batch.computed, batch.compute_errors
    for i in range(len(block)):
        state = RecordState(block.record(i), block.array[i])
        if errors is not None and errors[i] is not None:
            state.compute_error = errors[i]
        elif computed is not None:
            state.computed, state.argmax, state.peak = computed[i], batch.argmaxes[i], batch.peaks[i]
        yield state


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
