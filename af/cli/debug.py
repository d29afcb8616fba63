"""`af debug`: run the input with one replica, one record at a time, stopping at breakpoints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click

from ._app import command
from ._load import agent_options
from ._output import say


@command("debug")
@click.argument("bundle", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", required=True, type=click.Path(allow_dash=True),
              help="JSON Lines input (a file: stdin carries the commands).")
@click.option("--output", "-o", "output_path", default="-", show_default=True, type=click.Path(allow_dash=True),
              help="JSON Lines output ('-' for stdout).")
@click.option("--break", "-b", "breaks", multiple=True, metavar="STEP|STEP@N|record=ID",
              help="Stop before STEP, STEP@N (N-th record) or at record=ID; repeatable.")
@click.option("--trace", is_flag=True, help="Show each step as it runs, with its source line.")
@click.option("--commands", "commands_path", type=click.Path(path_type=Path),
              help="Read the commands at each stop from this file (one per line) instead of stdin.")
@agent_options
def debug_command(bundle: Path, *, input_path: str, output_path: str, breaks: tuple[str, ...], trace: bool,
                  commands_path: Optional[Path], backend: Optional[str], fuel: Optional[int],
                  max_bundle_mb: Optional[int]) -> None:
    """Debug an agent: one replica, batches of one record, breakpoints and a step trace.

    At a stop, commands are read from stdin (or --commands FILE): c|continue, s|step, n|next (stop
    at the next record), run N, p PATH (input, output, memory, memory.count, output.max ...),
    layers (each layer's values for the record), diff (ONNX and WebAssembly outputs side by side),
    fuel (the last wasm call's fuel against its budget), b|break [STEP[@N] [when EXPR]], delete [N],
    bt|where, q|quit (finish the records already read, run the shutdown workflow, exit 0), h|help.
    When the commands run out, the run continues.
    Ctrl-C at the prompt stops the run as SIGINT does (shutdown workflow, exit 130).

    Exit codes: 0 the input was consumed or the session quit; 1 the bundle cannot be loaded or an
    agent cannot start; 2 usage error (bad --break, AF0950-AF0952); 130/143 stopped by a signal.
    """
    from afcore.errors import UsageError
    from afdebug import Debugger, ensure_breakpoints, parse_breakpoint

    from ._load import close_streams, load_agent, open_stream, run_stream
    from .run import SIGNAL_EXIT

    breakpoints = [parse_breakpoint(text) for text in breaks]
    if input_path == "-" and breakpoints:
        raise UsageError("`--input -` cannot be used with breakpoints: stdin carries the debugger's commands",
                         code="AF0952", hint="put the records in a file and pass --input FILE")
    agent = load_agent(bundle, backend, fuel, command="af debug", max_bundle_mb=max_bundle_mb)
    ensure_breakpoints(breakpoints, agent.workflows)
    prompt = Prompt(_read_commands(commands_path) if commands_path is not None else None)
    debugger = Debugger(read=prompt.read, write=say, breakpoints=breakpoints, trace=trace,
                        source=_header_text(agent))
    source = open_stream(input_path, "rb", sys.stdin)
    sink = None
    try:
        sink = open_stream(output_path, "wb", sys.stdout)

        def arm(stop: Any) -> None:
            debugger.on_quit = stop.set
            prompt.on_interrupt = stop.set

        summary = run_stream(agent, source, sink, on_start=arm, instrument=debugger, replicas=1, max_batch=1,
                             batch_wait_ms=0.0)
    finally:
        close_streams(source, sink)
    # a quit stops the run too (summary.interrupted is then "stopped"): only a signal or Ctrl-C exits 130
    interrupted = "SIGINT" if prompt.interrupted else (None if debugger.quitted else summary.interrupted)
    say(f"{summary.records} records: {summary.results} results, {summary.errors} errors; "
        f"{debugger.stops} stops" + ("; quit" if debugger.quitted and not interrupted else ""))
    for bp in debugger.unmatched():
        say(f"note: breakpoint {bp} never matched")
    for error in summary.shutdown_errors:
        say(f"shutdown error: {error}")
    if interrupted:
        say(f"stopped by {interrupted}: the shutdown workflow ran")
        raise click.exceptions.Exit(SIGNAL_EXIT.get(interrupted, 130))


def _read_commands(path: Path) -> list[str]:
    """Return the lines of a --commands file (blank lines and `#` comments left out)."""
    from ._files import read_input

    text = read_input(path).decode("utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _header_text(agent: Any) -> Optional[str]:
    data = agent.bundle.members.get("agent.yaml")
    return data.decode("utf-8", errors="replace") if data is not None else None


class Prompt:
    """Reads the debugger's commands from stdin: with line editing and history when a person types.

    On a terminal, `input` is used with the `readline` module (history of the session, arrow keys);
    Ctrl-C there ends the run as SIGINT does (`on_interrupt` is called, then the debugger is told
    ``quit``), and Ctrl-D prints the newline the terminal did not. From a pipe, each command read is
    echoed after the prompt, so that the transcript on stderr shows what was asked.
    """

    def __init__(self, script: Optional[list[str]] = None) -> None:
        self.on_interrupt: Optional[Callable[[], None]] = None
        self.interrupted = False
        self.script = script  # the commands of --commands FILE, read in order instead of stdin

    def read(self) -> Optional[str]:
        """Return the next command line, or None at the end of the commands (the run then continues)."""
        from afdebug.debugger import PROMPT

        if self.script is not None:
            if not self.script:
                return None
            line = self.script.pop(0)
            say(f"{PROMPT}{line}")
            return line
        if not sys.stdin.isatty():
            line = sys.stdin.readline()
            if line:
                say(f"{PROMPT}{line.rstrip()}")
            return line or None
        try:
            line = self._read_terminal(PROMPT)
        except KeyboardInterrupt:
            say("")  # the terminal echoed ^C; the next message starts a line of its own
            self.interrupted = True
            if self.on_interrupt is not None:
                self.on_interrupt()
            return "quit"
        if line is None:
            say("")  # Ctrl-D: no newline was echoed
        return line

    @staticmethod
    def _read_terminal(prompt: str) -> Optional[str]:
        """Read a line at a terminal, Ctrl-C raising KeyboardInterrupt (the run's loop would only note it)."""
        import signal
        import threading

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
        try:
            if sys.stdout.isatty():
                import readline  # noqa: F401 - importing it gives input() line editing and history

                try:
                    return input(prompt)
                except EOFError:
                    return None
            sys.stderr.write(prompt)  # stdout carries the records: the prompt goes with the session
            sys.stderr.flush()
            return sys.stdin.readline() or None
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
