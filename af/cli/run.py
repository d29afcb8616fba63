"""`af run`: run a bundle (or an .af, compiled in memory) on JSON Lines records (docs/cli.md, `af run`).

The body is `_run.run_records`; `af.cli.main` calls it without typer for plain command lines
(`_fastpath`), so the options declared here and `_fastpath.RUN_OPTIONS` must agree (tests check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._app import command
from ._load import MAX_REPLICAS
from ._run import SIGNAL_EXIT as SIGNAL_EXIT
from ._run import run_records


@command("run")
def run_command(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="The bundle (.afb) to run, or an .af file to compile in memory first."),
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line and no summary (errors still show)."),
) -> None:
    """Run an agent on JSON Lines records: one output or error record per input record, in input order.

    Exit codes: 0 the input was consumed (even with record errors, unless --fail-on-error);
    1 the bundle cannot be loaded or an agent cannot start; 2 usage error;
    130/143 stopped by SIGINT/SIGTERM (shutdown workflows ran, results so far were written).
    """
    code = run_records(bundle, input_path=input_path, output_path=output_path, replicas=replicas, backend=backend,
                       swarm=swarm, state_dir=state_dir, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                       fuel=fuel, fail_on_error=fail_on_error, json_summary=json_summary, quiet=quiet)
    if code:
        raise typer.Exit(code)
