"""`af run`: run a bundle (or an .af, compiled in memory) on JSON Lines records (docs/cli.md, `af run`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import click

from ._app import command
from ._keys import admit_option, trust_option
from ._load import MAX_REPLICAS, agent_options
from ._output import say

if TYPE_CHECKING:
    from afrt import RunSummary

#: exit codes after a signal stopped the run (128 + signal number, as shells report it)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}
#: how many agent ids the summary line names before "and N more"
AGENTS_SHOWN = 4


@command("run")
@click.argument("bundle", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", default="-", show_default=True, type=click.Path(allow_dash=True),
              help="JSON Lines input ('-' for stdin).")
@click.option("--output", "-o", "output_path", default="-", show_default=True, type=click.Path(allow_dash=True),
              help="JSON Lines output ('-' for stdout); missing directories are created.")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1, MAX_REPLICAS),
              help="Replicas sharing the work (at most 10,000 in one process).")
@click.option("--swarm", default="default", show_default=True, help="The swarm's name.")
@click.option("--bus", default="memory", show_default=True, metavar="memory|URL",
              help="memory: run the input in this process. A redis:// or rediss:// URL: serve the swarm's "
                   "tasks as a worker until SIGTERM/SIGINT (docs/swarm.md).")
@click.option("--metrics-port", type=click.IntRange(1, 65535),
              help="With --bus URL: serve Prometheus metrics on this port.")
@click.option("--max-deliveries", default=3, show_default=True, type=click.IntRange(min=1),
              help="With --bus URL: a task delivered this often goes to the dead-letter stream.")
@click.option("--local-data", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --bus URL: take part in the agent's federated rounds with these records (safetensors "
                   "inputs/targets; never sent anywhere; docs/federated.md).")
@click.option("--validation-data", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="With --local-data: validate proposed models on these records (default: the local data).")
@click.option("--simulate-attack", type=click.Choice(("sign-flip", "gaussian", "label-flip")),
              help="With --local-data: misbehave on purpose, to evaluate robust strategies (marked in "
                   "`af federate status`).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep identities and checkpoints here.")
@click.option("--max-batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Most records per backend call.")
@click.option("--batch-wait-ms", default=2.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Longest wait for more records.")
@click.option("--fail-on-error", is_flag=True, help="Exit 1 when any record failed.")
@click.option("--json", "json_summary", is_flag=True, help="Print the summary as one JSON object on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="No progress line and no summary (errors still show).")
@click.option("--identity", type=click.Path(path_type=Path), metavar="KEY",
              help="With --bus URL: sign what this worker writes with this key (`af keygen`'s .key; "
                   "default: replica 0's identity in --state-dir, whose identity.pub is written beside it).")
@admit_option
@agent_options
@trust_option
def run_command(bundle: Path, *, input_path: str, output_path: str, replicas: int, backend: Optional[str],
                swarm: str, state_dir: Optional[Path], max_batch: int, batch_wait_ms: float, fuel: Optional[int],
                fail_on_error: bool, json_summary: bool, quiet: bool, max_bundle_mb: Optional[int], bus: str,
                metrics_port: Optional[int], max_deliveries: int, trust: tuple[Path, ...], local_data: Optional[Path],
                validation_data: Optional[Path], simulate_attack: Optional[str], identity: Optional[Path],
                admit: tuple[Path, ...]) -> None:
    """Run an agent on JSON Lines records: one output or error record per input record, in input order.

    BUNDLE is a bundle (.afb) or an .af file, compiled in memory first (told apart by content).
    With --trust, only a bundle signed by one of those keys runs, and with --state-dir never one
    older than a signed version that already ran from there (docs/security.md).

    Exit codes: 0 the input was consumed (even with record errors, unless --fail-on-error);
    1 the bundle cannot be loaded or an agent cannot start; 2 usage error;
    130/143 stopped by SIGINT/SIGTERM (shutdown workflows ran, results so far were written).

    A worker (--bus URL) signs every entry it writes (results, lifecycle events) with --identity
    or its state-dir identity; with --admit it drops every bus message not signed by an admitted
    key (docs/swarm.md, "Signed entries").
    """
    from ._load import close_streams, load_agent, open_stream, run_stream

    federated = {"local_data": local_data, "validation_data": validation_data, "attack": simulate_attack}
    if bus != "memory":
        _serve(bundle, federated=federated, url=bus, swarm=swarm, replicas=replicas, backend=backend, fuel=fuel, state_dir=state_dir,
               trust=trust, max_batch=max_batch, metrics_port=metrics_port, max_deliveries=max_deliveries,
               max_bundle_mb=max_bundle_mb, json_summary=json_summary, quiet=quiet, identity=identity, admit=admit,
               ignored=[flag for flag, given in (("--input", input_path != "-"), ("--output", output_path != "-"),
                                                 ("--fail-on-error", fail_on_error)) if given])
        return
    if any(federated.values()):
        from afcore.errors import UsageError

        raise UsageError("--local-data, --validation-data and --simulate-attack belong to a worker of a federation: "
                         "they need --bus URL", code="AF0973",
                         hint="af run BUNDLE --bus redis://HOST:PORT/DB --swarm NAME --local-data FILE")
    if metrics_port is not None:
        from afcore.errors import UsageError

        raise UsageError("--metrics-port serves a worker's metrics: it needs --bus URL", code="AF0936",
                         hint="af run BUNDLE --bus redis://HOST:PORT/DB --swarm NAME --metrics-port P")
    if identity is not None or admit:
        from afcore.errors import UsageError

        flags = " and ".join(flag for flag, given in (("--identity", identity is not None), ("--admit", admit)) if given)
        raise UsageError(f"{flags} sign(s) and verify(ies) what a worker exchanges on Redis: it needs --bus URL",
                         code="AF0980", hint="af run BUNDLE --bus redis://HOST:PORT/DB --swarm NAME --identity KEY "
                         "--admit PUB")
    source = open_stream(input_path, "rb", sys.stdin)
    opened: list = []

    def open_output():  # called once the agents have started: a refused run truncates nothing
        opened.append(open_stream(output_path, "wb", sys.stdout))
        return opened[0]

    try:
        agent = load_agent(bundle, backend, fuel, max_bundle_mb=max_bundle_mb, trust=trust, state_dir=state_dir,
                       lean=True)
        if input_path == "-" and sys.stdin.isatty() and not quiet:
            say("reading records from stdin (Ctrl-D to end)")
        summary = run_stream(agent, source, open_output, replicas=replicas, swarm=swarm, state_dir=state_dir,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                             progress=not quiet and sys.stderr.isatty())
    finally:
        close_streams(source, *opened)
    if not quiet or json_summary:
        _report(summary, json_summary)
    if summary.interrupted:
        raise click.exceptions.Exit(SIGNAL_EXIT.get(summary.interrupted, 130))
    if fail_on_error and summary.errors:
        raise click.exceptions.Exit(1)


def _serve(bundle: Path, *, federated: dict, url: str, swarm: str, replicas: int, backend: Optional[str], fuel: Optional[int],
           state_dir: Optional[Path], trust: tuple[Path, ...], max_batch: int, metrics_port: Optional[int], max_deliveries: int,
           max_bundle_mb: Optional[int], json_summary: bool, quiet: bool, ignored: list[str], identity: Optional[Path],
           admit: tuple[Path, ...]) -> None:
    """Run as a worker of swarm ``swarm`` on Redis until SIGTERM/SIGINT, then drain and leave (exit 0)."""
    import json

    import afrt
    from afcore.errors import UsageError

    from ._keys import read_admitted_keys, read_signing_key
    from ._load import load_agent, run_with_signals

    if ignored:
        raise UsageError(f"{', '.join(ignored)} do(es) not apply to a worker: its records come from the swarm",
                         code="AF0937", hint="send records with `af submit --bus URL --swarm NAME --agent AGENT`")
    key = read_signing_key(identity) if identity is not None else None
    admitted = read_admitted_keys(admit)
    agent = load_agent(bundle, backend, fuel, max_bundle_mb=max_bundle_mb, trust=trust, state_dir=state_dir,
                       lean=True)
    participation = _participation(bundle, federated, state_dir)
    if not quiet:
        signing = f"signing as key {key.key_id}" if key is not None else "signing with its identity"
        say(f"serving swarm {swarm} at {_without_password(url)} as agent {agent.name} "
            f"({replicas} replica(s), {signing}); SIGTERM or Ctrl-C drains and leaves")
    summary, caught = run_with_signals(lambda stop: afrt.serve_worker(
        agent, url=url, swarm=swarm, replicas=replicas, max_batch=max_batch, state_dir=state_dir,
        metrics_port=metrics_port, stop=stop, max_deliveries=max_deliveries, federation=participation,
        identity=key, admit=admitted))
    data = summary.to_json()
    if json_summary:
        say(json.dumps(data, sort_keys=True))
    elif not quiet:
        say(f"left swarm {swarm}" + (f" after {caught}" if caught else "") + f": {summary.records} records in "
            f"{summary.tasks} tasks, {summary.errors} errors, {summary.dead_letters} dead letters, "
            f"{summary.redeliveries} redeliveries, {summary.reconnects} reconnects; signed as key {summary.key_id}")
        dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in summary.dropped.items() if n)
        if dropped:
            say(f"dropped bus messages that --admit does not accept: {dropped}")
    for error in summary.shutdown_errors:
        say(f"shutdown error: {error}")


def _participation(bundle: Path, federated: dict, state_dir: Optional[Path]) -> Any:
    """Return the worker's `afrt.Participation` in federated rounds (``--local-data``), or None."""
    import afrt
    from afcore.errors import UsageError

    from ._files import read_head, sniff_kind

    if federated["local_data"] is None:
        if federated["validation_data"] or federated["attack"]:
            raise UsageError("--validation-data and --simulate-attack need --local-data", code="AF0974",
                             hint="a worker takes part in federated rounds with --local-data FILE")
        return None
    # the .af source is stored for `af federate pull`; a bundle is not read again just to be sniffed
    source = bundle.read_bytes() if sniff_kind(read_head(bundle)) == "agent" else None
    return afrt.Participation(federated["local_data"], federated["validation_data"], federated["attack"],
                              source=source, state_dir=state_dir)


def _without_password(url: str) -> str:
    import re

    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def summarise_list(items: list[str], shown: int = AGENTS_SHOWN) -> str:
    """Return ``a, b, c`` or, for a long list, its first ``shown`` items and ``and N more``."""
    if len(items) <= shown + 1:
        return ", ".join(items)
    return ", ".join(items[:shown]) + f" and {len(items) - shown:,} more"


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
    agents = summarise_list(list(summary.agents))
    say(f"agents: {agents}" + (" (ephemeral identities: no --state-dir)" if summary.ephemeral else ""))
    restored = list(summary.restored.items())
    for agent_id, state in restored[:AGENTS_SHOWN]:
        say(f"restored {agent_id} from its checkpoint (memory.count={state['count']})")
    if len(restored) > AGENTS_SHOWN:
        say(f"restored {len(restored) - AGENTS_SHOWN:,} more agents from their checkpoints")
    for notice in summary.notices:
        say(f"note: {notice}")
    for error in summary.shutdown_errors:
        say(f"shutdown error: {error}")
