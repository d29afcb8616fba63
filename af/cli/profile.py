"""`af profile`: run the input like `af run` under the profiler and print where the time goes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

import typer

from ._app import command, console, stdout
from ._load import MAX_REPLICAS

if TYPE_CHECKING:
    from afprof import Distribution, ProfileReport


class _Discard:
    """A binary sink that drops what it is given (outputs are not wanted without --output)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@command("profile")
def profile_command(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle (.afb) to profile, or an .af file to compile in memory first."),
    input_path: str = typer.Option(..., "--input", "-i", help="JSON Lines input ('-' for stdin)."),
    output_path: Optional[str] = typer.Option(None, "--output", "-o", help="Also write the output records here."),
    backend: str = typer.Option("onnx", "--backend", help="onnx (onnxruntime) or wasm (wasmtime, fuel-metered)."),
    replicas: int = typer.Option(1, "--replicas", min=1, max=MAX_REPLICAS, help="Replicas sharing the work (at most 10,000 in one process)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most records per backend call."),
    fuel: Optional[int] = typer.Option(None, "--fuel", min=1, help="WASM fuel per record (default: from the network's size)."),
    overhead: bool = typer.Option(False, "--overhead", help="Run the input a second time without the profiler and report the ratio."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object on stdout."),
) -> None:
    """Profile an agent on JSON Lines records: step and workflow times, backend time and fuel per record,
    messages per topic, traps per code, records/s.

    Exit codes: 0 the input was consumed; 1 the bundle cannot be loaded or an agent cannot start;
    2 usage error; 130/143 stopped by SIGINT/SIGTERM (the report covers what ran).
    """
    from afprof import Profiler

    from ._load import close_streams, ensure_backend, load_agent, open_stream, run_stream

    ensure_backend(backend)
    agent = load_agent(bundle, backend, fuel)
    options = {"replicas": replicas, "max_batch": max_batch}
    profiler = Profiler()
    # cleanup_resources closes the agent at the end of a run: the baseline gets its own replica
    spare = agent.replica() if overhead else None
    source = open_stream(input_path, "rb", sys.stdin)
    sink: IO[bytes] | Any = None
    try:
        sink = open_stream(output_path, "wb", sys.stdout) if output_path else _Discard()
        summary = run_stream(agent, source, sink, instrument=profiler.watching(agent), **options)
    finally:
        close_streams(source, sink if output_path else None)
    baseline = _baseline(spare, input_path, options) if spare is not None and not summary.interrupted else None
    report = profiler.report(summary, baseline_records_per_second=baseline)
    if as_json:
        import json

        stdout.print(json.dumps(report.to_json(), sort_keys=True), markup=False, highlight=False)
    else:
        _print(report)
    if summary.interrupted:
        from .run import SIGNAL_EXIT

        raise typer.Exit(SIGNAL_EXIT.get(summary.interrupted, 130))


def _baseline(agent: Any, input_path: str, options: dict[str, Any]) -> Optional[float]:
    """Return records/s of the same input without an instrument (the batched fast path), or None for stdin."""
    from ._load import close_streams, open_stream, run_stream

    if input_path == "-":
        console.print("note: --overhead needs a file --input (stdin cannot be read twice)", markup=False)
        return None
    source = open_stream(input_path, "rb", sys.stdin)
    try:
        summary = run_stream(agent, source, _Discard(), **options)
    finally:
        close_streams(source)
    return summary.records / summary.seconds if summary.seconds > 0 and summary.records else None


def _us(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1e6:,.1f}"


def _print(report: ProfileReport) -> None:
    from rich.measure import Measurement
    from rich.table import Table

    from afprof.report import HEADER

    console.print(f"note: {HEADER}", markup=False)
    rate = report.records_per_second
    line = f"{report.records} records in {report.seconds:.3f}s" + (f", {rate:,.0f} records/s" if rate else "")
    console.print(line + f" (backend {report.backend})", markup=False)
    if report.overhead is not None:
        console.print(f"without the profiler: {report.baseline_records_per_second:,.0f} records/s "
                      f"(profiling made the run {report.overhead:.2f}x slower)", markup=False)
    for table in (_workflow_table(report, Table), _step_table(report, Table)):
        # at its natural width: names cut to "exec…" would defeat the table (a pipe or CI log is 80 wide)
        natural = Measurement.get(console, console.options.update(max_width=1000), table).maximum
        width, console.width = console.width, max(console.width, natural)
        try:
            console.print(table)
        finally:
            console.width = width
    _print_backend(report)
    for title, counts in (("messages sent", report.messages), ("traps", report.traps)):
        if counts:
            console.print(f"{title}: " + ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())), markup=False)


def _workflow_table(report: ProfileReport, table_type: Any) -> Any:
    table = table_type(title="workflows (wall time per run, µs)")
    for column in ("workflow", "runs", "total", "mean", "p50", "p95"):
        table.add_column(column, justify="left" if column == "workflow" else "right")
    for w in report.workflows:
        table.add_row(w.workflow, str(w.runs), _us(w.seconds.total), *_dist(w.seconds))
    return table


def _step_table(report: ProfileReport, table_type: Any) -> Any:
    table = table_type(title="steps (wall time per call, µs)")
    for column in ("workflow", "step", "line", "calls", "skipped", "traps", "total", "mean", "p50", "p95"):
        table.add_column(column, justify="left" if column in ("workflow", "step") else "right")
    for s in report.steps:
        table.add_row(s.workflow, s.step, str(s.line or "-"), str(s.calls), str(s.skipped), str(s.traps),
                      _us(s.seconds.total), *_dist(s.seconds))
    return table


def _dist(d: Distribution) -> list[str]:
    return [_us(d.mean), _us(d.p50), _us(d.p95)]


def _print_backend(report: ProfileReport) -> None:
    b = report.backend_seconds_per_record
    console.print(f"backend: {report.backend_calls} calls for records (+{report.warmup_calls} warm-up); per record "
                  f"mean {_us(b.mean)} µs, p50 {_us(b.p50)} µs, p95 {_us(b.p95)} µs", markup=False)
    f = report.fuel_per_record
    if f is not None and f.count:
        console.print(f"fuel per record: mean {f.mean:,.0f}, p50 {f.p50:,.0f}, p95 {f.p95:,.0f}, max {f.max:,.0f} "
                      f"of a budget of {report.fuel_budget:,}", markup=False)
