"""`Profiler`: an `afrt.Instrument` that times steps, workflows and backend calls of a run.

It listens only to the hooks that every path calls (`step_timed`, `block_start`/`block_end`,
`backend_call`, `trap`, `message_sent`), never to the per-step ``before_step``/``after_step``:
so a profiled run takes the path `af run` takes (the batched path, for a workflow without guards)
and the profile measures it. On the batched path a step runs once per block; its time is shared
out equally among the block's records. The backend computes a block's outputs in one call before
the steps run; that call's time is shown under `process_neural_network`, the step that takes the
outputs, as well as on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from afrt import Instrument

from .layers import LAYER_SAMPLE_BLOCKS, LayerPass, layer_calls, measure_layers, measure_wasm_layers
from .report import Distribution, ProfileReport, StepProfile, WorkflowProfile

if TYPE_CHECKING:
    from afcore.errors import AfError
    from afcore.steps import Step

__all__ = ["Profiler", "TraceRecorder"]

#: workflows in the order they run (the report's order)
WORKFLOW_ORDER = ("initialization", "execution", "shutdown")
#: the lifecycle step whose backend call is a warm-up, not a record's
WARMUP_STEP = "load_neural_network"
#: the step under which the backend's time is shown
BACKEND_STEP = "process_neural_network"
#: trap events remembered to count an error reported twice only once (a batch holds at most this many)
RECENT_TRAPS = 4096
#: trace timestamps are µs with 3 decimals: two roundings may differ by this much
EPSILON_US = 0.002
#: backend spans starting after a call's stages that `TraceRecorder.call_layers` looks past (other replicas')
MAX_SKIPPED_SPANS = 64


@dataclass
class _StepStats:
    workflow: str
    name: str
    line: int | None
    chunks: list[tuple[int, float]] = field(default_factory=list)  # (records, seconds) per call
    skipped: int = 0
    traps: int = 0

    @property
    def calls(self) -> int:
        return sum(n for n, _ in self.chunks)


def _per_record(chunks: list[tuple[int, float]]) -> list[float]:
    """Spread each (records, seconds) chunk equally over its records."""
    return [seconds / n for n, seconds in chunks if n for _ in range(n)]


class Profiler(Instrument):
    """Collects a run's profile; pass it as ``RunOptions(instrument=...)`` or ``Swarm(instrument=...)``.

    Args:
        clock: the time source in seconds (default `time.perf_counter`), for the block times.
        trace: also record every block, backend call and step as a span (`trace_json`).
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter, trace: bool = False) -> None:
        self._clock = clock
        #: Chrome trace events when ``trace`` (see `trace_json`), else None
        self.trace: TraceRecorder | None = TraceRecorder(clock) if trace else None
        self._steps: dict[tuple[str, str, int | None], _StepStats] = {}
        self._lifecycle: dict[tuple[int, str], float] = {}  # (id(ctx), workflow) -> seconds of its steps
        self._blocks: dict[int, float] = {}  # id(ctx) -> when its current block started
        self._execution: list[tuple[int, float]] = []  # (records, seconds) per block
        self._replicas: dict[str, int] = {}  # agent id -> records it ran
        self._samples: list[Any] = []  # input arrays of the first blocks (`samples`)
        self._layers: list[Any] = []  # `LayerProfile`s, once `measure_layers` ran
        self._layer_pass: LayerPass | None = None  # how they were measured, or why they were not
        # the system clock and this clock at one moment: onnxruntime's profile is on the system clock
        self._wall_origin, self._clock_origin = time.time_ns(), clock()
        self._perf_origin = time.perf_counter()  # the wasm stages' clock (`merge_staged_calls`)
        self._calls: list[tuple[int, float, int | None]] = []  # (records, seconds, fuel) per backend call
        self._warmups = 0
        self._fuel_budget: int | None = None
        self._backend = "onnx"
        self.messages: dict[str, int] = {}
        self.traps: dict[str, int] = {}
        self._recent_traps: dict[int, Any] = {}

    def watching(self, agent: Any) -> Profiler:
        """Note what the report says of ``agent`` (backend, fuel budget, declared steps); return self.

        Args:
            agent: the `afrt.Agent` that will run.

        Returns:
            This profiler, to pass as the run's instrument. The agent's declared steps are listed
            in the report from then on, reached or not.
        """
        self._backend = getattr(agent, "backend", "onnx")
        self._fuel_budget = getattr(agent, "fuel_per_record", None)
        for workflow, steps in (getattr(agent, "workflows", None) or {}).items():
            for step in steps:  # listed even if never reached (a trap or a failed workflow stopped it)
                self._stats(workflow, step)
        return self

    # hooks -------------------------------------------------------------------------------------

    def step_timed(self, ctx: Any, workflow: str, step: Step, ran: int, skipped: int, failed: int,
                   seconds: float) -> None:
        if self.trace is not None:
            self.trace.step(ctx, workflow, step, ran, skipped, failed, seconds)
        stats = self._stats(workflow, step)
        if ran:
            stats.chunks.append((ran, seconds))
        stats.skipped += skipped
        stats.traps += failed
        if workflow != "execution":
            key = (id(ctx), workflow)
            self._lifecycle[key] = self._lifecycle.get(key, 0.0) + seconds
            if step.name == WARMUP_STEP and ran:
                self._warmups += 1

    def block_start(self, ctx: Any, block: Any) -> None:
        self._blocks[id(ctx)] = self._clock()
        array = getattr(block, "array", None)
        if len(self._samples) < LAYER_SAMPLE_BLOCKS and array is not None and len(array):
            self._samples.append(array)  # for `measure_layers`, after the run

    def block_end(self, ctx: Any, block: Any, outcomes: Any) -> None:
        started = self._blocks.pop(id(ctx), None)
        agent_id = getattr(ctx, "agent_id", None) or f"replica {id(ctx)}"
        self._replicas[agent_id] = self._replicas.get(agent_id, 0) + len(block)
        if started is not None and len(block):
            ended = self._clock()
            self._execution.append((len(block), ended - started))
            if self.trace is not None:
                self.trace.span(ctx, "execution", "workflow", started, ended, records=len(block))

    def backend_call(self, ctx: Any, records: int, seconds: float, fuel: int | None) -> None:
        self._calls.append((records, seconds, fuel))
        if self.trace is not None:
            ended = self._clock()
            self.trace.span(ctx, f"backend ({self._backend})", "backend", ended - seconds, ended, records=records,
                            fuel=fuel)

    def measure_layers(self, agent: Any, *, threads: int | None = None) -> None:
        """Time each network layer on a sample of this run's blocks, after the run (`afprof.layers`): on onnx
        with onnxruntime's profiler, on wasm through the module's per-stage exports. When the layers cannot
        be timed (a wasm module compiled before those exports, no records), the report says why.
        """
        from afcore.errors import AfError

        if getattr(agent, "backend", "onnx") == "wasm":
            try:
                self._layers, self._layer_pass = measure_wasm_layers(agent.bundle, self._samples,
                                                                     fuel_per_record=self._fuel_budget)
            except AfError as error:
                self._layers, self._layer_pass = [], LayerPass("wasm-stages", reason=_reason(error))
        elif "model.onnx" in agent.bundle.members:
            self._layers, self._layer_pass = measure_layers(agent.bundle, self._samples, threads=threads)

    def merge_staged_calls(self, calls: list[Any]) -> None:
        """Add the stages of the wasm calls run stage by stage (``afrt.load(..., profile_layers=True)``,
        `afrt.Agent.staged_calls`) to the trace, as ``layer`` spans inside the backend call that ran them.

        The stages are on `time.perf_counter`, converted to this profiler's clock. The runner reports a
        backend call a few µs after it ended, so a call's span may end a little later than its stages
        did: a call's stages are then moved later together, just enough to lie inside the span (they keep
        their durations and the gaps between them).
        """
        if self.trace is None or not calls:
            return
        offset = self._clock_origin - self._perf_origin
        names = ["input", *(f"layer {k}" for k in range(len(calls[0].stages) - 2)), "output"]
        self.trace.call_layers([[(names[index], start + offset, end + offset, {"fuel": fuel, "records": call.records})
                                 for index, (start, end, fuel) in enumerate(call.stages)] for call in calls])

    def merge_onnxruntime(self, start_ns: int, events: list[dict]) -> None:
        """Add onnxruntime's node events of this run (loaded with ``profile_layers``) to the trace, as
        ``layer`` spans inside the backend call that made them, on the same clock."""
        if self.trace is None or not events:
            return
        offset = self._clock_origin + (start_ns - self._wall_origin) / 1e9
        for layer, op, start_us, duration_us in layer_calls(events):
            started = offset + start_us / 1e6
            self.trace.layer(f"layer {layer} ({op})", started, started + duration_us / 1e6)

    def trace_json(self) -> dict[str, Any]:
        """Return the recorded spans as a Chrome trace (open it in Perfetto or chrome://tracing).

        Raises:
            ValueError: when the profiler was made without ``trace=True``.
        """
        if self.trace is None:
            raise ValueError("this profiler records no trace: make it with trace=True")
        return self.trace.to_json()

    def message_sent(self, ctx: Any, message: Any) -> None:
        self.messages[message.topic] = self.messages.get(message.topic, 0) + 1

    def trap(self, ctx: Any, error: AfError) -> None:
        # A record's failed backend call is reported twice: when the batch is retried record by
        # record, and when its process_neural_network step re-raises the same error. Count it once.
        recent = self._recent_traps
        if id(error) in recent:
            return
        recent[id(error)] = error  # holding the error keeps its id from being reused
        if len(recent) > RECENT_TRAPS:
            del recent[next(iter(recent))]
        self.traps[error.code] = self.traps.get(error.code, 0) + 1

    # bookkeeping -------------------------------------------------------------------------------

    def _stats(self, workflow: str, step: Step) -> _StepStats:
        line = step.span.get("line") if step.span else None
        key = (workflow, step.name, line)
        stats = self._steps.get(key)
        if stats is None:
            stats = self._steps[key] = _StepStats(workflow, step.name, line)
        return stats

    # the result --------------------------------------------------------------------------------

    def report(self, summary: Any = None, *, baseline_records_per_second: float | None = None) -> ProfileReport:
        """Return the profile.

        Args:
            summary: the run's `afrt.RunSummary` (records and wall time), or None.
            baseline_records_per_second: the same input's rate without the profiler, if measured.

        Returns:
            The `ProfileReport`.
        """
        record_calls = [(n, s) for n, s, _ in self._calls]
        return ProfileReport(
            backend=self._backend,
            workflows=self._workflows(),
            steps=self._step_profiles(record_calls),
            backend_calls=len(self._calls),
            backend_seconds_per_record=Distribution.of(_per_record(record_calls)),
            warmup_calls=self._warmups,
            fuel_per_record=self._fuel(),
            fuel_budget=self._fuel_budget,
            messages=dict(self.messages),
            traps=dict(self.traps),
            records=getattr(summary, "records", 0) if summary is not None else 0,
            seconds=getattr(summary, "seconds", 0.0) if summary is not None else 0.0,
            baseline_records_per_second=baseline_records_per_second,
            replicas=dict(self._replicas),
            latencies=tuple(_per_record(self._execution)),
            layers=list(self._layers),
            layer_pass=self._layer_pass,
        )

    def _workflows(self) -> list[WorkflowProfile]:
        runs: dict[str, list[float]] = {}
        for (_, workflow), seconds in self._lifecycle.items():
            runs.setdefault(workflow, []).append(seconds)
        if self._execution:
            runs["execution"] = _per_record(self._execution)
        names = sorted(runs, key=_workflow_rank)
        return [WorkflowProfile(n, len(runs[n]), Distribution.of(runs[n])) for n in names]

    def _step_profiles(self, backend: list[tuple[int, float]]) -> list[StepProfile]:
        ordered = sorted(self._steps.values(), key=lambda s: (_workflow_rank(s.workflow), s.line or 0))
        out = []
        for s in ordered:
            per_record = _per_record(s.chunks)
            if s.workflow == "execution" and s.name == BACKEND_STEP and per_record:
                # the backend call made for the step's records, shared out as the step's own time is
                shares = _per_record(backend)
                per_record = [a + b for a, b in zip(per_record, shares)] + per_record[len(shares):]
            out.append(StepProfile(s.workflow, s.name, s.line, s.calls, s.skipped, s.traps,
                                   Distribution.of(per_record)))
        return out

    def _fuel(self) -> Distribution | None:
        if self._backend != "wasm":
            return None
        return Distribution.of([fuel / n for n, _, fuel in self._calls if fuel is not None for _ in range(n)])


class TraceRecorder:
    """Spans of one run, per replica (one trace thread each), in Chrome's trace event format.

    Lifecycle workflows become a span from their first step's start to their last step's end;
    each block of records is an ``execution`` span holding its backend call and its steps.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._origin = clock()
        self.events: list[dict[str, Any]] = []
        self._threads: dict[int, int] = {}  # id(ctx) -> trace thread id
        self._lifecycle: dict[tuple[int, str], list[float]] = {}  # (tid, workflow) -> [start, end]

    def _tid(self, ctx: Any) -> int:
        tid = self._threads.get(id(ctx))
        if tid is None:
            tid = self._threads[id(ctx)] = len(self._threads) + 1
            name = getattr(ctx, "agent_id", None) or f"replica {tid}"
            self.events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}})
        return tid

    def span(self, ctx: Any, name: str, category: str, started: float, ended: float, **args: Any) -> None:
        """Record a span from ``started`` to ``ended`` (clock seconds) on the replica's thread."""
        self.events.append(self._event(name, category, self._tid(ctx), started, ended,
                                       {k: v for k, v in args.items() if v is not None}))

    def _event(self, name: str, category: str, tid: int, started: float, ended: float,
               args: dict[str, Any]) -> dict[str, Any]:
        # Both ends are rounded the same way, so a child that ends before its parent still does.
        ts, end = (round((t - self._origin) * 1e6, 3) for t in (started, max(started, ended)))
        return {"name": name, "cat": category, "ph": "X", "pid": 1, "tid": tid, "ts": ts,
                "dur": round(end - ts, 3), "args": args}

    def step(self, ctx: Any, workflow: str, step: Step, ran: int, skipped: int, failed: int, seconds: float) -> None:
        """Record a step that just ended (a `step_timed` event)."""
        ended = self._clock()
        started = ended - seconds
        self.span(ctx, step.name, "step", started, ended, workflow=workflow, ran=ran, skipped=skipped, failed=failed,
                  source=step.source or None)
        if workflow != "execution":
            bounds = self._lifecycle.setdefault((self._tid(ctx), workflow), [started, ended])
            bounds[0], bounds[1] = min(bounds[0], started), max(bounds[1], ended)

    def layer(self, name: str, started: float, ended: float) -> None:
        """Record a layer's kernel (from onnxruntime's profile) on the thread of the backend call
        that holds it; one held by none goes on a thread of its own (``onnxruntime``)."""
        ts = round((started - self._origin) * 1e6, 3)
        end = round((ended - self._origin) * 1e6, 3)
        holder = next((e for e in self.events if e.get("cat") == "backend" and e["ts"] <= ts
                       and end <= e["ts"] + e["dur"] + 0.002), None)
        tid = holder["tid"] if holder is not None else 0
        if holder is None and not any(e.get("tid") == 0 and e["ph"] == "M" for e in self.events):
            self.events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": 0,
                                "args": {"name": "onnxruntime (outside the traced calls)"}})
        self.events.append(self._event(name, "layer", tid, started, ended, {}))

    def call_layers(self, calls: list[list[tuple[str, float, float, dict[str, Any]]]]) -> None:
        """Record the stages of backend calls, each call's as (name, start, end, args) in clock seconds,
        inside the ``backend`` span of the call that ran them: the earliest-ending span, not yet given
        stages, that ends after them and starts before their end. When that span starts later than the
        call's first stage (the runner reports a call a few µs after it ended, and the span is placed by
        that report) the call's stages are moved later together, just enough. Stages no span holds go on
        a thread of their own."""
        import bisect

        holders = sorted((e["ts"] + e["dur"], i) for i, e in enumerate(self.events) if e.get("cat") == "backend")
        ends = [end for end, _ in holders]
        held: set[int] = set()
        for spans in calls:
            ts, end = (round((t - self._origin) * 1e6, 3) for t in (spans[0][1], spans[-1][2]))
            tid, shift, later = 0, 0.0, 0
            for span_end, i in holders[bisect.bisect_left(ends, end - EPSILON_US):]:
                holder = self.events[i]
                if holder["ts"] > end + EPSILON_US:
                    later += 1
                    if later > MAX_SKIPPED_SPANS:  # sorted by end: the spans from here on start later still
                        break
                    continue
                if i not in held and end + max(holder["ts"] - ts, 0.0) <= span_end + EPSILON_US:
                    held.add(i)
                    tid, shift = holder["tid"], max(holder["ts"] - ts, 0.0) / 1e6
                    break
            if tid == 0:
                self._ensure_outside_thread()
            for name, started, ended, args in spans:
                self.events.append(self._event(name, "layer", tid, started + shift, ended + shift, args))

    def _ensure_outside_thread(self) -> None:
        if not any(e.get("tid") == 0 and e["ph"] == "M" for e in self.events):
            self.events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": 0,
                                "args": {"name": "layers outside the traced calls"}})

    def to_json(self) -> dict[str, Any]:
        """Return ``{"traceEvents": [...], "displayTimeUnit": "ms"}``, parents before children."""
        events = list(self.events)
        for (tid, workflow), (started, ended) in self._lifecycle.items():
            events.append(self._event(workflow, "workflow", tid, started, ended, {}))
        # Viewers nest spans of one thread by time; a parent listed first when two start together.
        events.sort(key=lambda e: (e.get("tid", 0), e.get("ts", -1), -e.get("dur", 0)))
        return {"traceEvents": events, "displayTimeUnit": "ms"}


def _reason(error: Any) -> str:
    """The sentence saying why layers could not be timed, from the error that said so."""
    message = str(getattr(error, "message", error))
    marker = "per-layer time is not available: "
    return message.split(marker, 1)[1] if marker in message else f"{getattr(error, 'code', '')}: {message}".strip(": ")


def _workflow_rank(name: str) -> int:
    return WORKFLOW_ORDER.index(name) if name in WORKFLOW_ORDER else len(WORKFLOW_ORDER)
