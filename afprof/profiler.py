"""`Profiler`: an `afrt.Instrument` that times steps, workflows and backend calls of a run.

Step times come from the hooks (``before_step`` to ``after_step``, guard evaluation included).
A step that got ``before_step`` but neither ``after_step`` nor ``trap`` was skipped by its guard;
that is known when the replica's next hook arrives (or at `Profiler.report`).

Backend time and fuel are not visible to hooks: micro-batching computes a batch's outputs in one
backend call before its records run their steps. `Profiler.wrap` therefore wraps the agent so
that each ``infer`` call is timed where it runs (possibly a worker thread) and, on the wasm
backend, its fuel read right after it; each record of a call is charged the call's share.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from afrt import Instrument

from .report import Distribution, ProfileReport, StepProfile, WorkflowProfile

if TYPE_CHECKING:
    from afcore.errors import AfError
    from afcore.steps import Step

__all__ = ["Profiler"]

#: workflows in the order they run (the report's order)
WORKFLOW_ORDER = ("initialization", "execution", "shutdown")
#: the lifecycle step whose backend call is a warm-up, not a record's
WARMUP_STEP = "load_neural_network"
#: trap events remembered to count an error reported twice only once (a batch holds at most this many)
RECENT_TRAPS = 4096


@dataclass
class _StepStats:
    workflow: str
    name: str
    line: int | None
    seconds: list[float] = field(default_factory=list)
    skipped: int = 0
    traps: int = 0


@dataclass
class _Open:
    """The step a replica is in: set by ``before_step``, closed by ``after_step`` or ``trap``."""

    stats: _StepStats
    started: float


class Profiler(Instrument):
    """Collects a run's profile; pass it as ``RunOptions(instrument=...)`` or ``Swarm(instrument=...)``.

    Args:
        clock: the time source in seconds (default `time.perf_counter`).
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._steps: dict[tuple[str, str, int | None], _StepStats] = {}
        self._open: dict[int, _Open] = {}  # id(ctx) -> open step
        self._open_agent: dict[int, str] = {}  # id(ctx.agent) -> name of its open step
        self._runs: dict[int, list[Any]] = {}  # id(ctx) -> [workflow, run key, started, last]
        self._run_seconds: dict[str, list[float]] = {}
        self._calls: list[tuple[int, float, int | None]] = []  # (records, seconds, fuel) per record call
        self._warmups = 0
        self._fuel_budget: int | None = None
        self._backend = "onnx"
        self.messages: dict[str, int] = {}
        self.traps: dict[str, int] = {}
        self._recent_traps: dict[int, Any] = {}

    def wrap(self, agent: Any) -> Any:
        """Return ``agent`` with its backend calls timed (and metered, on wasm) by this profiler.

        Args:
            agent: an `afrt.Agent`.

        Returns:
            An object that behaves as the agent; its replicas are wrapped too. The agent's
            declared steps are listed in the report from then on, reached or not.
        """
        self._backend = getattr(agent, "backend", "onnx")
        self._fuel_budget = getattr(agent, "fuel_per_record", None)
        for workflow, steps in (getattr(agent, "workflows", None) or {}).items():
            for step in steps:  # listed even if never reached (a trap or a failed workflow stopped it)
                self._stats(workflow, step)
        return _ProfiledAgent(agent, self)

    # hooks -------------------------------------------------------------------------------------

    def before_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        now = self._clock()
        key = id(ctx)
        self._skip_open(key, id(ctx.agent))
        run_key = (workflow, record.record.seq if record is not None else None)
        run = self._runs.get(key)
        if run is None or (run[0], run[1]) != run_key:
            self._close_run(key)
            self._runs[key] = [workflow, run_key[1], now, now]
        else:
            run[3] = now  # a step its guard skips still belongs to the run
        self._open[key] = _Open(self._stats(workflow, step), now)
        self._open_agent[id(ctx.agent)] = step.name

    def after_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        now = self._clock()
        opened = self._open.pop(id(ctx), None)
        self._open_agent.pop(id(ctx.agent), None)
        if opened is not None:
            opened.stats.seconds.append(now - opened.started)
        self._touch(id(ctx), now)

    def message_sent(self, ctx: Any, message: Any) -> None:
        self.messages[message.topic] = self.messages.get(message.topic, 0) + 1

    def trap(self, ctx: Any, error: AfError) -> None:
        opened = self._open.pop(id(ctx), None)
        self._open_agent.pop(id(ctx.agent), None)
        if opened is not None:
            opened.stats.traps += 1
        self._touch(id(ctx), self._clock())
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

    def _skip_open(self, key: int, agent_key: int) -> None:
        # A step still open when the next one begins never ran: its guard was false.
        opened = self._open.pop(key, None)
        self._open_agent.pop(agent_key, None)
        if opened is not None:
            opened.stats.skipped += 1

    def _touch(self, key: int, now: float) -> None:
        run = self._runs.get(key)
        if run is not None:
            run[3] = now

    def _close_run(self, key: int) -> None:
        run = self._runs.pop(key, None)
        if run is not None:
            self._run_seconds.setdefault(run[0], []).append(run[3] - run[2])

    def _record_call(self, agent: Any, records: int, seconds: float, fuel: int | None) -> None:
        # Called from the thread that ran the call; list.append is atomic under the GIL.
        if self._open_agent.get(id(agent)) == WARMUP_STEP:
            self._warmups += 1
        else:
            self._calls.append((records, seconds, fuel))

    # the result --------------------------------------------------------------------------------

    def report(self, summary: Any = None, *, baseline_records_per_second: float | None = None) -> ProfileReport:
        """Close what is still open and return the profile.

        Args:
            summary: the run's `afrt.RunSummary` (records and wall time), or None.
            baseline_records_per_second: the same input's rate without the profiler, if measured.

        Returns:
            The `ProfileReport`.
        """
        for key in list(self._open):
            opened = self._open.pop(key)
            opened.stats.skipped += 1
        self._open_agent.clear()
        for key in list(self._runs):
            self._close_run(key)
        return ProfileReport(
            backend=self._backend,
            workflows=self._workflows(),
            steps=self._step_profiles(),
            backend_calls=len(self._calls),
            backend_seconds_per_record=Distribution.of([s / n for n, s, _ in self._calls for _ in range(n)]),
            warmup_calls=self._warmups,
            fuel_per_record=self._fuel(),
            fuel_budget=self._fuel_budget,
            messages=dict(self.messages),
            traps=dict(self.traps),
            records=getattr(summary, "records", 0) if summary is not None else 0,
            seconds=getattr(summary, "seconds", 0.0) if summary is not None else 0.0,
            baseline_records_per_second=baseline_records_per_second,
        )

    def _workflows(self) -> list[WorkflowProfile]:
        names = sorted(self._run_seconds, key=_workflow_rank)
        return [WorkflowProfile(n, len(self._run_seconds[n]), Distribution.of(self._run_seconds[n])) for n in names]

    def _step_profiles(self) -> list[StepProfile]:
        ordered = sorted(self._steps.values(), key=lambda s: (_workflow_rank(s.workflow), s.line or 0))
        return [StepProfile(s.workflow, s.name, s.line, len(s.seconds), s.skipped, s.traps,
                            Distribution.of(s.seconds)) for s in ordered]

    def _fuel(self) -> Distribution | None:
        if self._backend != "wasm":
            return None
        return Distribution.of([fuel / n for n, _, fuel in self._calls if fuel is not None for _ in range(n)])


def _workflow_rank(name: str) -> int:
    return WORKFLOW_ORDER.index(name) if name in WORKFLOW_ORDER else len(WORKFLOW_ORDER)


class _ProfiledAgent:
    """An agent whose ``infer`` reports each call's records, wall time and fuel to the profiler.

    Everything else is the wrapped agent's (attribute reads pass through).
    """

    def __init__(self, agent: Any, profiler: Profiler) -> None:
        self._agent = agent
        self._profiler = profiler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._agent, name)

    def __repr__(self) -> str:
        return f"<profiled {self._agent!r}>"

    def infer(self, inputs: Any) -> Any:
        """Run the wrapped agent's ``infer`` and record the call."""
        started = time.perf_counter()
        out = self._agent.infer(inputs)
        seconds = time.perf_counter() - started
        records = len(inputs) if getattr(inputs, "ndim", 1) == 2 else 1
        self._profiler._record_call(self, records, seconds, self._agent.fuel_used)
        return out

    def replica(self) -> _ProfiledAgent:
        """Return a wrapped replica of the wrapped agent."""
        return _ProfiledAgent(self._agent.replica(), self._profiler)
