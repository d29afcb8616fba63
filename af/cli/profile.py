"""`af profile`: run the input like `af run` under the profiler and print where the time goes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

import click

from ._app import command
from ._load import MAX_REPLICAS, agent_options
from ._output import emit, print_table, say, terminal_width

if TYPE_CHECKING:
    from afprof import Distribution, ProfileReport

#: the step table's columns, and which to leave out first when the terminal is too narrow
STEP_COLUMNS = ("workflow", "step", "line", "calls", "skipped", "traps", "total", "mean", "p50", "p95", "p99")
STEP_DROP_ORDER = ("total", "line", "skipped", "traps", "p99", "p95", "mean")
WORKFLOW_COLUMNS = ("workflow", "runs", "total", "mean", "p50", "p95")
WORKFLOW_DROP_ORDER = ("total", "p95", "mean")
#: columns whose cells are text (left-aligned); the others are numbers
_TEXT_COLUMNS = ("workflow", "step")


class _Discard:
    """A binary sink that drops what it is given (outputs are not wanted without --output)."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@command("profile")
@click.argument("bundle", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", required=True, type=click.Path(allow_dash=True),
              help="JSON Lines input ('-' for stdin).")
@click.option("--output", "-o", "output_path", type=click.Path(allow_dash=True),
              help="Also write the output records here ('-' for stdout, not with --json).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, MAX_REPLICAS),
              help="Replicas sharing the work (at most 10,000 in one process).")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most records per backend call.")
@click.option("--overhead", is_flag=True, help="Run the input a second time without the profiler and report the ratio.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object on stdout (schemas/profile-1.0.schema.json).")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path),
              help="Write the blocks, backend calls, steps and layers as Chrome trace events (Perfetto, chrome://tracing).")
@agent_options
def profile_command(bundle: Path, *, input_path: str, output_path: Optional[str], backend: Optional[str],
                    replicas: int, max_batch: int, fuel: Optional[int], overhead: bool, as_json: bool,
                    trace_path: Optional[Path], max_bundle_mb: Optional[int]) -> None:
    """Profile an agent on JSON Lines records: step and workflow times, backend time and fuel per record,
    messages per topic, traps per code, records/s.

    Exit codes: 0 the input was consumed; 1 the bundle cannot be loaded or an agent cannot start;
    2 usage error; 130/143 stopped by SIGINT/SIGTERM (the report covers what ran).
    """
    from afcore.errors import UsageError
    from afprof import Profiler

    from ._load import close_streams, load_agent, open_stream, run_stream

    if output_path == "-" and as_json:
        raise UsageError("`--output -` and `--json` would both write to stdout", code="AF0908",
                         hint="write the records to a file (-o FILE), or drop --json (the tables go to stderr)")
    from ._files import check_output

    if trace_path is not None:
        check_output(trace_path)
    # With --trace, the run times its own layers (onnx: onnxruntime's profiler, ~17 µs a call; wasm: each
    # call stage by stage, ~15 µs a call), merged into the trace inside each backend call, so the traced
    # run is slower than a plain one (the report's layer times come from a separate pass, which slows
    # nothing: afprof.layers).
    agent = load_agent(bundle, backend, fuel, command="af profile", max_bundle_mb=max_bundle_mb,
                       profile_layers=trace_path is not None)
    options = {"replicas": replicas, "max_batch": max_batch}
    profiler = Profiler(trace=trace_path is not None)
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
    profiler.merge_onnxruntime(*agent.layer_events())
    profiler.merge_staged_calls(agent.staged_calls())
    profiler.measure_layers(agent)
    report = profiler.report(summary, baseline_records_per_second=baseline)
    if trace_path is not None:
        import json

        from afcore.fsutil import write_file_atomic

        write_file_atomic(trace_path, json.dumps(profiler.trace_json()).encode())
    if as_json:
        import json

        emit(json.dumps(report.to_json(), sort_keys=True))
    else:
        _print(report)
    if summary.interrupted:
        from .run import SIGNAL_EXIT

        raise click.exceptions.Exit(SIGNAL_EXIT.get(summary.interrupted, 130))


def _baseline(agent: Any, input_path: str, options: dict[str, Any]) -> Optional[float]:
    """Return records/s of the same input without an instrument (the batched fast path), or None for stdin."""
    from ._load import close_streams, open_stream, run_stream

    if input_path == "-":
        say("note: --overhead needs a file --input (stdin cannot be read twice)")
        return None
    source = open_stream(input_path, "rb", sys.stdin)
    try:
        summary = run_stream(agent, source, _Discard(), **options)
    finally:
        close_streams(source)
    return summary.records / summary.seconds if summary.seconds > 0 and summary.records else None


def overhead_text(overhead: float) -> str:
    """Say how the profiler changed the run's speed, the right way round (a ratio below 1 is noise)."""
    if overhead >= 1.0:
        return f"profiling made the run {overhead:.2f}x slower"
    return f"the profiled run was {1 / overhead:.2f}x faster: run-to-run noise, profiling costs nothing measurable here"


def _us(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 1e6:,.1f}"


def _print(report: ProfileReport) -> None:
    from afprof.report import HEADER

    _say_wrapped(f"note: {HEADER}")
    rate = report.records_per_second
    line = f"{report.records} records in {report.seconds:.3f}s" + (f", {rate:,.0f} records/s" if rate else "")
    say(line + f" (backend {report.backend})")
    if report.overhead is not None:
        say(f"without the profiler: {report.baseline_records_per_second:,.0f} records/s "
            f"({overhead_text(report.overhead)})")
    workflows = [[w.workflow, str(w.runs), _us(w.seconds.total), *_dist(w.seconds)] for w in report.workflows]
    steps = [[s.workflow, s.step, str(s.line or "-"), str(s.calls), str(s.skipped), str(s.traps),
              _us(s.seconds.total), *_dist(s.seconds)] for s in report.steps]
    print_table("workflows (wall time per run, µs)", WORKFLOW_COLUMNS, workflows, left=_TEXT_COLUMNS,
                drop_order=WORKFLOW_DROP_ORDER)
    print_table("steps (wall time per call, µs)", STEP_COLUMNS, steps, left=_TEXT_COLUMNS, drop_order=STEP_DROP_ORDER)
    _print_backend(report)
    _print_layers(report)
    for title, counts in (("messages sent", report.messages), ("traps", report.traps)):
        if counts:
            say(f"{title}: " + ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())))
    _print_pictures(report)


def _print_layers(report: ProfileReport) -> None:
    """The layers table (from the separate pass), what the layers add up to, or why there is none."""
    layer_pass = report.layer_pass
    if report.layers:
        wasm = report.backend == "wasm"
        rows = [[str(layer.layer), layer.ops, str(layer.calls), *_dist(layer.seconds), _us(layer.per_record.mean)]
                + ([f"{layer.fuel_per_record.mean:,.0f}"] if wasm and layer.fuel_per_record is not None else [])
                for layer in report.layers]
        how = "stage by stage" if wasm else "onnxruntime's profiler"
        print_table(f"layers (µs per call; a separate pass, {how})",
                    ("layer", "ops", "calls", "mean", "p50", "p95", "p99", "per record", *(["fuel/record"] if wasm else [])),
                    rows, left=("ops",), drop_order=("p99", "p95", "calls", "fuel/record"))
    if layer_pass is None:
        return
    if layer_pass.reason is not None:
        _say_wrapped(f"layers: per-layer time is not available: {layer_pass.reason}")
    elif layer_pass.call_seconds is not None and layer_pass.layers_seconds is not None:
        whole, parts = layer_pass.call_seconds.p50, layer_pass.layers_seconds.p50
        timer = (f"; timing a call costs {_us(layer_pass.timer_seconds)} µs, taken off each time"
                 if layer_pass.timer_seconds is not None else "")
        _say_wrapped(f"layers: a call's parts add up to {_us(parts)} µs at p50, the whole call took {_us(whole)} µs "
                     f"in the same pass{timer}")


def _dist(d: Distribution) -> list[str]:
    return [_us(d.mean), _us(d.p50), _us(d.p95), _us(d.p99)]


def _say_wrapped(text: str) -> None:
    """Say a long line wrapped at the terminal's width (continuation lines indented)."""
    import textwrap

    say(textwrap.fill(text, width=max(terminal_width(), 40), subsequent_indent="  "))


#: the characters of a bar, from an eighth of a cell to a whole one
_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(share: float, width: int) -> str:
    """Return a bar of ``share`` (0 to 1) of ``width`` cells, in eighths of a cell."""
    eighths = round(max(0.0, min(share, 1.0)) * width * 8)
    return ("█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")).ljust(width)


def bar_chart(title: str, rows: list[tuple[str, float, str]]) -> None:
    """Print labelled bars (label, share of the whole, text after the bar), fitting the terminal."""
    if not rows:
        return
    label_width = min(max(len(label) for label, _, _ in rows), 40)
    text_width = max(len(text) for _, _, text in rows)
    width = max(terminal_width() - label_width - text_width - 6, 10)
    say(title)
    for label, share, text in rows:
        say(f"  {label[:label_width]:<{label_width}} {bar(share, width)} {text}")


def _print_pictures(report: ProfileReport) -> None:
    """Where the time went, the latency histogram, fuel against the budget, records per replica."""
    parts = report.breakdown()
    total = sum(seconds for _, seconds in parts) or 1.0
    bar_chart(f"where the run's {report.seconds * 1e3:,.1f} ms went (the backend's time is in process_neural_network)",
              [(name, seconds / total, f"{seconds / total:6.1%} {seconds * 1e3:9.2f} ms") for name, seconds in parts])
    execution = next((w for w in report.workflows if w.workflow == "execution"), None)
    if execution is not None and execution.seconds.count:
        _histogram(report, execution.seconds)
    fuel = report.fuel_per_record
    if fuel is not None and fuel.count and report.fuel_budget:
        bar_chart("fuel per record against the budget",
                  [(kind, value / report.fuel_budget, f"{value / report.fuel_budget:6.1%} {value:,.0f} of {report.fuel_budget:,}")
                   for kind, value in (("mean", fuel.mean), ("p95", fuel.p95), ("max", fuel.max))])
    if len(report.replicas) > 1:
        most = max(report.replicas.values())
        bar_chart("records per replica", [(agent, n / most, f"{n:,}") for agent, n in sorted(report.replicas.items())])


def _histogram(report: ProfileReport, seconds: Distribution) -> None:
    """The execution workflow's time per record, in buckets a power of two of microseconds wide."""
    from afprof.report import latency_buckets

    buckets = latency_buckets(report)
    most = max(n for _, n in buckets) or 1
    bar_chart("time per record in the execution workflow (µs): records per bucket",
              [(label, n / most, f"{n:,}") for label, n in buckets])


def _print_backend(report: ProfileReport) -> None:
    b = report.backend_seconds_per_record
    _say_wrapped(f"backend: {report.backend_calls} calls for records (+{report.warmup_calls} warm-up); per record "
                 f"mean {_us(b.mean)} µs, p50 {_us(b.p50)} µs, p95 {_us(b.p95)} µs")
    f = report.fuel_per_record
    if f is not None and f.count:
        _say_wrapped(f"fuel per record: mean {f.mean:,.0f}, p50 {f.p50:,.0f}, p95 {f.p95:,.0f}, max {f.max:,.0f} "
            f"of a budget of {report.fuel_budget:,}")
