"""The body of `af run`, free of typer: `run.py` declares the command, `_fastpath` calls this directly."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ._output import say

if TYPE_CHECKING:
    from afrt.stream import RunSummary

#: exit codes after a signal stopped the run (128 + signal number, as shells report it)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def run_records(
    bundle: Path,
    *,
    input_path: str,
    output_path: str,
    replicas: int,
    backend: str,
    swarm: str,
    state_dir: Optional[Path],
    max_batch: int,
    batch_wait_ms: float,
    fuel: Optional[int],
    fail_on_error: bool,
    json_summary: bool,
    quiet: bool = False,
) -> int:
    """Run a bundle on JSON Lines records and report the summary on stderr (the options of `af run`).

    Returns:
        The exit code: 0, 1 with ``fail_on_error`` when a record failed, 130/143 after SIGINT/SIGTERM.

    Raises:
        AfError: the options are invalid, the bundle cannot be loaded or an agent cannot start.
    """
    from ._load import close_streams, ensure_backend, load_agent, open_stream, run_stream

    ensure_backend(backend)
    source = open_stream(input_path, "rb", sys.stdin)
    opened: list = []

    def open_output():  # called once the agents have started: a refused run truncates nothing
        opened.append(open_stream(output_path, "wb", sys.stdout))
        return opened[0]

    try:
        agent = load_agent(bundle, backend, fuel)
        _collect_during_run()
        summary = run_stream(agent, source, open_output, replicas=replicas, swarm=swarm, state_dir=state_dir,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                             progress=not quiet and sys.stderr.isatty())
    finally:
        close_streams(source, *opened)
    if not quiet or json_summary:
        _report(summary, json_summary)
    if summary.interrupted:
        return SIGNAL_EXIT.get(summary.interrupted, 130)
    if fail_on_error and summary.errors:
        return 1
    return 0


def _collect_during_run() -> None:
    """Turn garbage collection back on if the fast path turned it off for the imports and the load.

    What exists then lives until exit: it is frozen first, so that the run's collections skip it.
    """
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _report(summary: RunSummary, as_json: bool) -> None:
    import json

    if as_json:
        say(json.dumps(summary.to_json(), sort_keys=True))
        return
    data = summary.to_json()
    rate = f", {data['records_per_second']:.0f} records/s" if data["records_per_second"] else ""
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(summary.error_codes.items()))
    filtered = f", {summary.filtered} filtered" if summary.filtered else ""
    say(f"{summary.records} records: {summary.results} results, {summary.errors} errors"
        + (f" ({codes})" if codes else "") + filtered + f" in {summary.seconds:.2f}s{rate}")
    if data["bandwidth_wait_seconds"]:
        say(f"publishing was held back {data['bandwidth_wait_seconds']:.2f}s by network_bandwidth_mbps")
    if summary.interrupted:
        say(f"stopped by {summary.interrupted}: the rest of the input was not read")
    if summary.unwritten:
        say(f"{summary.written} records written, {summary.unwritten} not written: the output did not take them")
    agents = ", ".join(summary.agents)
    say(f"agents: {agents}" + (" (ephemeral identities: no --state-dir)" if summary.ephemeral else ""))
    for agent_id, restored in summary.restored.items():
        say(f"restored {agent_id} from its checkpoint (memory.count={restored['count']})")
    for notice in summary.notices:
        say(f"note: {notice}")
    for error in summary.shutdown_errors:
        say(f"shutdown error: {error}")
