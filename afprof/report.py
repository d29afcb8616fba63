"""The profile of one run: what `af profile` prints as a table or as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = ["HEADER", "Distribution", "ProfileReport", "StepProfile", "WorkflowProfile", "latency_buckets"]

#: said at the top of every report: what profiling changes in the run it measures
HEADER = (
    "profiled run: the path af run takes (batched for a workflow without guards); a step run over a block "
    "is shared out equally among its records, and process_neural_network includes the backend call"
)


@dataclass(frozen=True)
class Distribution:
    """Summary statistics of a list of measurements (seconds, fuel units, ...)."""

    count: int = 0
    total: float = 0.0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    max: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        """Return the statistics of ``values`` (percentiles by linear interpolation, as numpy's default).

        Args:
            values: the measurements; may be empty.

        Returns:
            The distribution; the statistics are None for no values.
        """
        if not values:
            return cls()
        import numpy as np

        array = np.asarray(values, dtype=np.float64)
        p50, p95, p99 = np.percentile(array, [50, 95, 99])
        return cls(len(array), float(array.sum()), float(array.mean()), float(p50), float(p95), float(array.max()),
                   float(p99))

    def to_json(self) -> dict[str, Any]:
        """Return the statistics as plain JSON data."""
        return {"count": self.count, "total": self.total, "mean": self.mean, "p50": self.p50, "p95": self.p95,
                "p99": self.p99, "max": self.max}


@dataclass(frozen=True)
class StepProfile:
    """One step of one workflow: ``calls`` that ran (wall time of each), ``skipped`` by its guard,
    ``traps`` (the step raised)."""

    workflow: str
    step: str
    line: int | None
    calls: int
    skipped: int
    traps: int
    seconds: Distribution

    def to_json(self) -> dict[str, Any]:
        """Return the step's profile as plain JSON data."""
        return {"workflow": self.workflow, "step": self.step, "line": self.line, "calls": self.calls,
                "skipped": self.skipped, "traps": self.traps, "seconds": self.seconds.to_json()}


@dataclass(frozen=True)
class WorkflowProfile:
    """One workflow: ``runs`` (once per record for ``execution``) and the wall time of each run."""

    workflow: str
    runs: int
    seconds: Distribution

    def to_json(self) -> dict[str, Any]:
        """Return the workflow's profile as plain JSON data."""
        return {"workflow": self.workflow, "runs": self.runs, "seconds": self.seconds.to_json()}


@dataclass(frozen=True)
class ProfileReport:
    """Everything the profiler measured in one run.

    Attributes:
        backend: ``onnx`` or ``wasm``.
        workflows: per workflow, in the order they run.
        steps: per step, in declared order within each workflow.
        backend_calls: batched backend calls made for records (warm-up calls excluded).
        backend_seconds_per_record: a call's wall time divided by its records, once per record.
        warmup_calls: backend calls made by ``load_neural_network``.
        fuel_per_record: fuel used per record (wasm only; a call's fuel divided by its records).
        fuel_budget: the wasm fuel budget of one record, or None.
        messages: messages sent, per topic.
        traps: trap hook events, per error code.
        records: records read; ``seconds`` the run's wall time; ``records_per_second`` their ratio.
        baseline_records_per_second: the same input without the profiler, when measured.
        replicas: records each replica ran, by agent id.
    """

    backend: str
    workflows: list[WorkflowProfile] = field(default_factory=list)
    steps: list[StepProfile] = field(default_factory=list)
    backend_calls: int = 0
    backend_seconds_per_record: Distribution = field(default_factory=Distribution)
    warmup_calls: int = 0
    fuel_per_record: Distribution | None = None
    fuel_budget: int | None = None
    messages: dict[str, int] = field(default_factory=dict)
    traps: dict[str, int] = field(default_factory=dict)
    records: int = 0
    seconds: float = 0.0
    baseline_records_per_second: float | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    #: the execution workflow's time of each record, in seconds (what the latency histogram counts)
    latencies: tuple[float, ...] = field(default=(), repr=False)
    #: each network layer's kernel time (`afprof.layers.LayerProfile`), when measured
    layers: list[Any] = field(default_factory=list)
    #: how the layers were timed, or why they were not (`afprof.layers.LayerPass`); None when not asked
    layer_pass: Any = None

    @property
    def records_per_second(self) -> float | None:
        """Return records per second of the profiled run, or None when nothing ran."""
        return self.records / self.seconds if self.seconds > 0 and self.records else None

    def breakdown(self) -> list[tuple[str, float]]:
        """Return where the run's wall time went, as (part, seconds) adding up to ``seconds``.

        The parts: the lifecycle workflows; each execution step (process_neural_network with the
        backend call); the runner's own work per block (batching, publishing: a block's time less
        its steps and backend call); and the edge (reading and parsing the input, queueing,
        writing the output: the run's wall time less all the rest). With several replicas the
        workflows overlap in time, so the parts are shares of the summed work, scaled to the wall.
        """
        parts: list[tuple[str, float]] = []
        execution = next((w.seconds.total for w in self.workflows if w.workflow == "execution"), 0.0)
        for w in self.workflows:
            if w.workflow != "execution":
                parts.append((w.workflow, w.seconds.total))
        steps = [(f"{s.step} (line {s.line})" if s.line else s.step, s.seconds.total)
                 for s in self.steps if s.workflow == "execution" and s.calls]
        parts += steps
        parts.append(("runner (batching, publishing)", max(execution - sum(t for _, t in steps), 0.0)))
        work = sum(t for _, t in parts)
        if work > self.seconds > 0:
            parts = [(name, t * self.seconds / work) for name, t in parts]
        else:
            parts.append(("edge (reading, parsing, writing)", max(self.seconds - work, 0.0)))
        return parts

    @property
    def overhead(self) -> float | None:
        """Return baseline records/s over profiled records/s (how much slower profiling made it)."""
        rate = self.records_per_second
        if rate is None or not self.baseline_records_per_second:
            return None
        return self.baseline_records_per_second / rate

    def to_json(self) -> dict[str, Any]:
        """Return the report as plain JSON data (times in seconds)."""
        return {
            "header": HEADER,
            "backend": self.backend,
            "records": self.records,
            "seconds": self.seconds,
            "records_per_second": self.records_per_second,
            "baseline_records_per_second": self.baseline_records_per_second,
            "overhead": self.overhead,
            "workflows": [w.to_json() for w in self.workflows],
            "steps": [s.to_json() for s in self.steps],
            "backend_calls": self.backend_calls,
            "warmup_calls": self.warmup_calls,
            "backend_seconds_per_record": self.backend_seconds_per_record.to_json(),
            "fuel_per_record": self.fuel_per_record.to_json() if self.fuel_per_record is not None else None,
            "fuel_budget": self.fuel_budget,
            "messages": dict(sorted(self.messages.items())),
            "traps": dict(sorted(self.traps.items())),
            "replicas": dict(sorted(self.replicas.items())),
            "breakdown": [{"part": name, "seconds": seconds} for name, seconds in self.breakdown()],
            "layers": [layer.to_json() for layer in self.layers],
            "layer_pass": None if self.layer_pass is None else self.layer_pass.to_json(),
        }


def latency_buckets(report: ProfileReport) -> list[tuple[str, int]]:
    """Count the records' execution times in buckets a power of two of microseconds wide.

    Returns:
        (label such as ``"8-16"``, records) from the fastest bucket to the slowest, gaps included.
    """
    import math

    if not report.latencies:
        return []
    exponents = [max(0, math.floor(math.log2(max(t * 1e6, 1.0)))) for t in report.latencies]
    low, high = min(exponents), max(exponents)
    counts = [0] * (high - low + 1)
    for e in exponents:
        counts[e - low] += 1
    return [(f"{2 ** (low + i):,}-{2 ** (low + i + 1):,}", n) for i, n in enumerate(counts)]
