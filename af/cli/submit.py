"""`af submit`: send JSON Lines records to a swarm on Redis and write one result per record (docs/cli.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from ._app import command
from ._keys import admit_option
from ._output import say

#: the priorities `--priority` takes (afrt's submit checks the same three)
PRIORITIES = ("high", "normal", "low")


@command("submit")
@click.option("--bus", "url", required=True, metavar="URL",
              help="The swarm's Redis: redis://[USER:PASSWORD@]HOST:PORT/DB (rediss:// for TLS).")
@click.option("--swarm", required=True, help="The swarm's name.")
@click.option("--agent", help="The agent that runs the records (not with --attach).")
@click.option("--input", "-i", "input_path", default="-", show_default=True, type=click.Path(allow_dash=True),
              help="JSON Lines input ('-' for stdin).")
@click.option("--output", "-o", "output_path", default="-", show_default=True, type=click.Path(allow_dash=True),
              help="JSON Lines output ('-' for stdout); with --attach, appended to.")
@click.option("--priority", default="normal", show_default=True, type=click.Choice(PRIORITIES),
              help="Which task stream the records go to; workers read higher priorities first.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Wait at most this long for the results; each missing record then gets an AF5261 error line.")
@click.option("--attach", metavar="SUBMISSION_ID", help="Receive the remaining results of a submit that was killed.")
@click.option("--fail-on-error", is_flag=True, help="Exit 1 when any record failed.")
@click.option("--json", "json_summary", is_flag=True, help="Print the summary as one JSON object on stderr.")
@click.option("--identity", type=click.Path(path_type=Path), metavar="KEY",
              help="Sign the answers this submit writes itself with this key (`af keygen`'s .key); give the same "
                   "to `--attach` with --admit.")
@admit_option
def submit_command(url: str, *, swarm: str, agent: Optional[str], input_path: str, output_path: str, priority: str,
                   timeout: Optional[float], attach: Optional[str], fail_on_error: bool, json_summary: bool,
                   admit: tuple[Path, ...], identity: Optional[Path]) -> None:
    """Send records to swarm NAME's workers and print exactly one output or error record per input
    line, in input order, in the record format of `af run`.

    The submission id is printed on stderr first: `af submit --attach ID` receives what a killed
    submit had not written yet, each line once. Exit codes as `af run`: 0 (record errors included,
    unless --fail-on-error), 1 when Redis cannot be reached or the submission is unknown, 2 usage
    error, 130/143 stopped by a signal.

    With --admit, only results signed by the admitted workers' keys are taken; the others are
    dropped (counted in the summary's `dropped`, with a warning) and never printed.
    """
    import afrt
    from afcore.errors import UsageError

    from ._keys import read_admitted_keys, read_signing_key
    from ._load import close_streams, open_stream, run_with_signals

    if (agent is None) == (attach is None):
        raise UsageError("give --agent to submit records, or --attach ID to resume a submission", code="AF0935",
                         hint="af submit --bus URL --swarm NAME --agent AGENT [--input FILE]")
    admitted = read_admitted_keys(admit)
    key = read_signing_key(identity) if identity is not None else None
    written = None
    if attach is not None and output_path != "-":
        written = _complete_lines(Path(output_path))
    source = None if attach is not None else open_stream(input_path, "rb", sys.stdin)
    sink = open_stream(output_path, "ab" if attach is not None else "wb", sys.stdout)
    submission = attach or afrt.new_submission_id()
    say(f"submission {submission}")
    try:
        summary, interrupted = run_with_signals(lambda stop: afrt.submit_records(
            url=url, swarm=swarm, agent=agent, source=source, sink=sink, priority=priority, timeout=timeout,
            attach=attach, submission=submission, written=written, admit=admitted, identity=key))
    finally:
        close_streams(source, sink)
    _report(summary, json_summary)
    if interrupted:
        from .run import SIGNAL_EXIT

        raise click.exceptions.Exit(SIGNAL_EXIT.get(interrupted, 130))
    if fail_on_error and summary.errors:
        raise click.exceptions.Exit(1)


def _complete_lines(path: Path) -> int:
    """Return how many complete lines an existing output file holds (0 when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return 0
    if data and not data.endswith(b"\n"):  # a line the killed submit had only begun: cut it off
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    return data.count(b"\n")


def _report(summary, as_json: bool) -> None:
    import json

    data = summary.to_json()
    if as_json:
        say(json.dumps(data, sort_keys=True))
        return
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(summary.error_codes.items()))
    say(f"{summary.records} records: {summary.results} results, {summary.errors} errors"
        + (f" ({codes})" if codes else "") + (f", {summary.filtered} filtered" if summary.filtered else "")
        + f" in {summary.seconds:.2f}s (submission {summary.submission})")
    if summary.timed_out:
        say(f"{summary.timed_out} records got no result before --timeout (AF5261)")
    dropped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in summary.dropped.items() if n)
    if dropped:
        say(f"dropped result entries that --admit does not accept: {dropped}")
