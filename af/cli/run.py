"""`af run`: run a bundle (or an .af, compiled in memory) on JSON Lines records (docs/cli.md, `af run`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ._app import command, console
from ._load import MAX_REPLICAS

if TYPE_CHECKING:
    from afrt.stream import RunSummary

#: exit codes after a signal stopped the run (128 + signal number, as shells report it)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


@command("run")
def run_command(
    bundle: Path = typer.Argument(..., help="The bundle (.afb) to run, or an .af file to compile in memory first."),
    input_path: str = typer.Option("-", "--input", "-i", help="JSON Lines input ('-' for stdin)."),
    output_path: str = typer.Option("-", "--output", "-o", help="JSON Lines output ('-' for stdout)."),
    replicas: int = typer.Option(1, "--replicas", min=1, max=MAX_REPLICAS, help="Replicas sharing the work (at most 10,000 in one process)."),
    backend: str = typer.Option("onnx", "--backend", help="onnx (onnxruntime) or wasm (wasmtime, fuel-metered)."),
    swarm: str = typer.Option("default", "--swarm", help="The swarm's name."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Keep identities and checkpoints here."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most records per backend call."),
    batch_wait_ms: float = typer.Option(2.0, "--batch-wait-ms", min=0.0, help="Longest wait for more records."),
    fuel: Optional[int] = typer.Option(None, "--fuel", min=1, help="WASM fuel per record (default: from the network's size)."),
    fail_on_error: bool = typer.Option(False, "--fail-on-error", help="Exit 1 when any record failed."),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stderr."),
) -> None:
    """Run an agent on JSON Lines records: one output or error record per input record, in input order.

    Exit codes: 0 the input was consumed (even with record errors, unless --fail-on-error);
    1 the bundle cannot be loaded or an agent cannot start; 2 usage error;
    130/143 stopped by SIGINT/SIGTERM (shutdown workflows ran, results so far were written).
    """
    from ._load import close_streams, ensure_backend, load_agent, open_stream, run_stream

    ensure_backend(backend)
    source = open_stream(input_path, "rb", sys.stdin)
    sink = None
    try:
        agent = load_agent(bundle, backend, fuel)
        sink = open_stream(output_path, "wb", sys.stdout)  # after loading: a bad bundle truncates nothing
        summary = run_stream(agent, source, sink, replicas=replicas, swarm=swarm, state_dir=state_dir,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms)
    finally:
        close_streams(source, sink)
    _report(summary, json_summary)
    if summary.interrupted:
        raise typer.Exit(SIGNAL_EXIT.get(summary.interrupted, 130))
    if fail_on_error and summary.errors:
        raise typer.Exit(1)


def _report(summary: RunSummary, as_json: bool) -> None:
    import json

    if as_json:
        console.print(json.dumps(summary.to_json(), sort_keys=True), markup=False, highlight=False)
        return
    data = summary.to_json()
    rate = f", {data['records_per_second']:.0f} records/s" if data["records_per_second"] else ""
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(summary.error_codes.items()))
    console.print(
        f"{summary.records} records: {summary.results} results, {summary.errors} errors"
        + (f" ({codes})" if codes else "") + f" in {summary.seconds:.2f}s{rate}",
        markup=False, highlight=False,
    )
    if data["bandwidth_wait_seconds"]:
        console.print(f"publishing was held back {data['bandwidth_wait_seconds']:.2f}s by network_bandwidth_mbps",
                      markup=False, highlight=False)
    if summary.interrupted:
        console.print(f"stopped by {summary.interrupted}: the rest of the input was not read", markup=False)
    agents = ", ".join(summary.agents)
    console.print(f"agents: {agents}" + (" (ephemeral identities: no --state-dir)" if summary.ephemeral else ""),
                  markup=False, highlight=False)
    for agent_id, restored in summary.restored.items():
        console.print(f"restored {agent_id} from its checkpoint (memory.count={restored['count']})", markup=False)
    for notice in summary.notices:
        console.print(f"note: {notice}", markup=False, highlight=False)
    for error in summary.shutdown_errors:
        console.print(f"shutdown error: {error}", markup=False, highlight=False)
