"""`af debug`: run the input with one replica, one record at a time, stopping at breakpoints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from ._app import command, console


@command("debug")
def debug_command(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle (.afb) to debug, or an .af file to compile in memory first."),
    input_path: str = typer.Option(..., "--input", "-i", help="JSON Lines input (a file: stdin carries the commands)."),
    output_path: str = typer.Option("-", "--output", "-o", help="JSON Lines output ('-' for stdout)."),
    breaks: List[str] = typer.Option([], "--break", "-b", help="Stop before STEP, STEP@N (N-th record) or at record=ID; repeatable."),
    trace: bool = typer.Option(False, "--trace", help="Show each step as it runs, with its source line."),
    backend: str = typer.Option("onnx", "--backend", help="onnx (onnxruntime) or wasm (wasmtime, fuel-metered)."),
    fuel: Optional[int] = typer.Option(None, "--fuel", min=1, help="WASM fuel per record (default: from the network's size)."),
) -> None:
    """Debug an agent: one replica, batches of one record, breakpoints and a step trace.

    At a stop, commands are read from stdin: c|continue, s|step, p PATH (input, output, memory,
    memory.count, output.max ...), bt|where, q|quit (finish the records already read, run the
    shutdown workflow, exit 0), h|help. When stdin has no more commands, the run continues.

    Exit codes: 0 the input was consumed or the session quit; 1 the bundle cannot be loaded or an
    agent cannot start; 2 usage error (bad --break, AF0950-AF0952).
    """
    from afcore.errors import UsageError
    from afdebug import Debugger, ensure_breakpoints, parse_breakpoint

    from ._load import close_streams, ensure_backend, load_agent, open_stream, run_stream

    ensure_backend(backend)
    breakpoints = [parse_breakpoint(text) for text in breaks]
    if input_path == "-" and breakpoints:
        raise UsageError("`--input -` cannot be used with breakpoints: stdin carries the debugger's commands",
                         code="AF0952", hint="put the records in a file and pass --input FILE")
    agent = load_agent(bundle, backend, fuel)
    ensure_breakpoints(breakpoints, agent.workflows)
    debugger = Debugger(read=_read_command, write=_write, breakpoints=breakpoints, trace=trace,
                        source=_header_text(agent))
    source = open_stream(input_path, "rb", sys.stdin)
    sink = None
    try:
        sink = open_stream(output_path, "wb", sys.stdout)

        def arm(stop: Any) -> None:
            debugger.on_quit = stop.set

        summary = run_stream(agent, source, sink, on_start=arm, instrument=debugger, replicas=1, max_batch=1,
                             batch_wait_ms=0.0)
    finally:
        close_streams(source, sink)
    console.print(f"{summary.records} records: {summary.results} results, {summary.errors} errors; "
                  f"{debugger.stops} stops" + ("; quit" if debugger.quitted else ""), markup=False)
    for error in summary.shutdown_errors:
        console.print(f"shutdown error: {error}", markup=False)
    if summary.interrupted and not debugger.quitted:
        from .run import SIGNAL_EXIT

        raise typer.Exit(SIGNAL_EXIT.get(summary.interrupted, 130))


def _header_text(agent: Any) -> Optional[str]:
    data = agent.bundle.members.get("agent.yaml")
    return data.decode("utf-8", errors="replace") if data is not None else None


def _read_command() -> Optional[str]:
    """Read one command line from stdin (None at its end); prompt only when a person types."""
    interactive = sys.stdin.isatty()
    if interactive:
        console.print("(afdb) ", end="", markup=False)
    line = sys.stdin.readline()
    if not line:
        return None
    if not interactive:
        console.print(f"(afdb) {line.rstrip()}", markup=False)  # a transcript shows what was asked
    return line


def _write(text: str) -> None:
    console.print(text, markup=False, highlight=False)
