"""`Debugger`: an `afrt.Instrument` with breakpoints, stepping, field inspection and a step trace.

It runs inside the replica's task: at a stop it reads commands synchronously through the
``read`` callback, which blocks the event loop. That is deliberate and fine for what `af debug`
runs (one replica, batches of one record): nothing else has work to do while the author looks.
The debugger never prints: everything goes through the ``write`` callback (`af` prints).

Breakpoints (`parse_breakpoint`): ``STEP`` stops before every run of that step, ``STEP@N``
before that step for the N-th input record (1-based, in input order), ``record=ID`` before the
first execution step of the record whose id is ID; ``STEP when EXPR`` stops only when the guard
expression (the step language's, docs/steps.md) is true there. Commands at a stop: see `HELP`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from afcore.errors import ExecutionError, UsageError
from afcore.steps import FIELD_ROOTS, Field, evaluate
from afrt import Instrument, resolve_field

if TYPE_CHECKING:
    from afcore.errors import AfError
    from afcore.steps import Step

__all__ = ["Breakpoint", "Debugger", "ensure_breakpoints", "parse_breakpoint", "parse_field"]

#: what `help` answers at a stop
HELP = (
    "commands: c|continue  s|step  n|next (stop at the next record)  run N (let N more records run)  "
    "p PATH (input, output, memory, memory.count, output.max, input[0] ...)  "
    "layers  diff  fuel  b|break [STEP[@N] [when EXPR] | record=ID]  delete [N]  bt|where  q|quit  h|help"
)
#: the prompt written before each command is read
PROMPT = "(afdb) "

_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*|-?[0-9]+)|\[(-?[0-9]+)\]")
_STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Breakpoint:
    """Where to stop: before ``step`` (any record, or only the ``nth`` one), or at ``record_id``;
    with a ``condition``, only when that guard expression is true there."""

    step: Optional[str] = None
    nth: Optional[int] = None
    record_id: Optional[str] = None
    condition: Any = field(default=None, compare=False)
    condition_text: Optional[str] = None

    def __str__(self) -> str:
        if self.record_id is not None:
            return f"record={self.record_id}"
        where = f"{self.step}@{self.nth}" if self.nth is not None else str(self.step)
        return f"{where} when {self.condition_text}" if self.condition_text else where


def parse_breakpoint(text: str) -> Breakpoint:
    """Parse ``STEP``, ``STEP@N`` or ``record=ID``.

    Args:
        text: the breakpoint as given to ``--break``.

    Returns:
        The `Breakpoint`.

    Raises:
        UsageError: AF0950 when the text is none of those forms.
    """
    text = text.strip()
    if text.startswith("record="):
        if len(text) > len("record="):
            return Breakpoint(record_id=text[len("record="):])
    else:
        where, keyword, condition = text.partition(" when ")
        name, _, nth = where.strip().partition("@")
        if _STEP_NAME.fullmatch(name) and (not nth or (nth.isdigit() and int(nth) >= 1)):
            guard = _parse_condition(name, condition.strip()) if keyword else None
            return Breakpoint(step=name, nth=int(nth) if nth else None, condition=guard,
                              condition_text=condition.strip() if keyword else None)
    raise UsageError(f"bad breakpoint `{text}`", code="AF0950",
                     hint="write STEP, STEP@N (N-th record, from 1), STEP when EXPR or record=ID")


def _parse_condition(step: str, condition: str) -> Any:
    """Parse a breakpoint's ``when`` expression with the step language (afc.parse_step)."""
    from afc import parse_step
    from afcore.errors import ParseError
    from afcore.spans import Span

    text = f"{step} when {condition}"
    try:
        return parse_step(text, locate=lambda start, end: Span("<break>", 1, start + 1, 1, end + 1)).guard
    except ParseError as error:
        found = error.diagnostics[0]
        raise UsageError(f"bad breakpoint condition `{condition}`: {found.message}", code="AF0950",
                         hint=found.help or "write a guard as in docs/steps.md, e.g. output.max > 0.9") from None


def ensure_breakpoints(breakpoints: Sequence[Breakpoint], workflows: Any) -> None:
    """Check that each step breakpoint names a step of the agent's workflows.

    Raises:
        UsageError: AF0951 for a step no workflow has (the hint lists the steps).
    """
    import difflib

    names = {step.name for steps in workflows.values() for step in steps}
    for bp in breakpoints:
        if bp.step is not None and bp.step not in names:
            close = difflib.get_close_matches(bp.step, sorted(names), n=1)
            guess = f"did you mean `{close[0]}`? " if close else ""
            raise UsageError(f"breakpoint `{bp}`: no workflow has a step `{bp.step}`", code="AF0951",
                             hint=guess + "the agent's steps: " + ", ".join(sorted(names)))


def parse_field(text: str) -> Field:
    """Turn a dotted path such as ``output.max``, ``memory.class_counts.3`` or ``input[0]`` into a `Field`.

    Raises:
        ValueError: when the text is not a path rooted at input, output or memory.
    """
    text = text.strip()
    root = re.match(r"[A-Za-z_]+", text)
    if root is None or root.group() not in FIELD_ROOTS:
        raise ValueError(f"`{text}` is not a field path: start with {', '.join(FIELD_ROOTS)}")
    path: list[str | int] = []
    pos = root.end()
    while pos < len(text):
        m = _PATH_PART.match(text, pos)
        if m is None:
            raise ValueError(f"`{text}` is not a field path (at `{text[pos:]}`)")
        part = m.group(1) if m.group(1) is not None else m.group(2)
        path.append(int(part) if re.fullmatch(r"-?[0-9]+", part) else part)
        pos = m.end()
    return Field(root.group(), tuple(path))


class Debugger(Instrument):
    """Stops at breakpoints and reads commands; optionally traces every step with its source line.

    Args:
        read: returns the next command line, or None when there is none (then the run continues).
        write: shows one line of text to the author.
        breakpoints: where to stop.
        trace: show each step as it runs, with its source line.
        source: the .af header text (bundle member ``agent.yaml``), for source lines; None: none.
        on_quit: called once on ``quit`` (`af debug` stops reading input, so that the records
            already read finish and the shutdown workflow runs).
    """

    def __init__(self, *, read: Callable[[], Optional[str]], write: Callable[[str], None],
                 breakpoints: Sequence[Breakpoint] = (), trace: bool = False, source: Optional[str] = None,
                 on_quit: Optional[Callable[[], None]] = None) -> None:
        self._read, self._write = read, write
        self.breakpoints = list(breakpoints)
        self.trace = trace
        self._lines = source.splitlines() if source is not None else []
        self.on_quit = on_quit
        self.stepping = False
        self.quitted = False
        self.stops = 0
        self._hits = {bp: 0 for bp in self.breakpoints}
        self._last_seq: Optional[int] = None  # the record whose steps run now (one replica: in order)
        self._records_to_run: Optional[int] = None  # `next`/`run N`: records to let by before stopping
        self._probe: Any = None  # the ONNX model with each layer's values as outputs (made on first `layers`)
        self._twin: Any = None  # the agent on the other backend (loaded on first `diff`)

    # hooks -------------------------------------------------------------------------------------

    def before_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        first = record is not None and record.record.seq != self._last_seq
        if first:
            self._last_seq = record.record.seq
        if self.trace:  # the trace goes on after quit: it shows the shutdown workflow running
            self._show_step(ctx, workflow, step, record)
        if self.quitted:
            return
        counted = False
        if first and self._records_to_run is not None:
            self._records_to_run -= 1
            counted = self._records_to_run < 0
            if counted:
                self._records_to_run = None
        hit = self._hit(ctx, workflow, step, record, first)
        if hit is not None or self.stepping or counted:
            self._stop(ctx, workflow, step, record, hit, "next record" if counted else "step")

    def unmatched(self) -> list[Breakpoint]:
        """Return the breakpoints that never stopped the run (e.g. a ``record=ID`` no record has)."""
        return [bp for bp, hits in self._hits.items() if not hits]

    def trap(self, ctx: Any, error: AfError) -> None:
        if self.trace:
            self._write(f"trap: {error.code}: {error.message}")

    # stopping ----------------------------------------------------------------------------------

    def _hit(self, ctx: Any, workflow: str, step: Step, record: Any, first: bool) -> Optional[Breakpoint]:
        for bp in self.breakpoints:
            if bp.record_id is not None:
                if first and workflow == "execution" and str(record.record.id) == bp.record_id:
                    return bp
            elif bp.step == step.name and (bp.nth is None or (record is not None and record.record.seq + 1 == bp.nth)):
                if bp.condition is None or self._holds(bp, ctx, record):
                    return bp
        return None

    def _holds(self, bp: Breakpoint, ctx: Any, record: Any) -> bool:
        try:
            return bool(evaluate(bp.condition, lambda root, path: resolve_field(ctx, record, root, path)))
        except ExecutionError:
            return False  # a field that does not exist here: the condition is not met

    def _stop(self, ctx: Any, workflow: str, step: Step, record: Any, hit: Optional[Breakpoint], reason: str) -> None:
        self.stops += 1
        self.stepping = False
        self._records_to_run = None  # any stop ends a `next` or `run N`
        if hit is not None:
            self._hits[hit] = self._hits.get(hit, 0) + 1
        why = f"breakpoint {hit}" if hit is not None else reason
        self._write(f"stopped ({why}) before {workflow}/{step.source or step.name}{_record_text(record)}")
        if not self.trace:
            self._show_source(step)
        while True:
            line = self._read()
            if line is None:  # no more commands (stdin closed): run on to the end
                return
            if self._command(line.strip(), ctx, workflow, step, record):
                return

    def _command(self, line: str, ctx: Any, workflow: str, step: Step, record: Any) -> bool:
        """Run one command; return True when the run should go on."""
        word, _, rest = line.partition(" ")
        if word in ("c", "continue"):
            return True
        if word in ("s", "step"):
            self.stepping = True
            return True
        if word in ("q", "quit"):
            self.quitted = True
            if self.on_quit is not None:
                self.on_quit()
            return True
        if word in ("n", "next"):
            self._records_to_run = 0
            return True
        if word == "run":
            if not rest.strip().isdigit() or int(rest) < 1:
                self._write("error: write `run N`, N a number of records (at least 1)")
                return False
            self._records_to_run = int(rest)  # the rest of this record, N more, then stop
            return True
        if word in ("p", "print"):
            self._write(self.inspect(rest, ctx, record))
        elif word in ("bt", "where"):
            self._where(ctx, workflow, step, record)
        elif word == "layers":
            self._layers(ctx, record)
        elif word == "diff":
            self._diff(ctx, record)
        elif word == "fuel":
            self._fuel(ctx)
        elif word in ("b", "break"):
            self._break(rest)
        elif word == "delete":
            self._delete(rest)
        elif word in ("h", "help", "?"):
            self._write(HELP)
        elif word:
            self._write(f"unknown command `{word}`; {HELP}")
        return False

    def _where(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        """Show the workflow with the current step marked, then its source line."""
        self._write(f"agent {ctx.agent_id}, workflow {workflow}{_record_text(record)}:")
        for other in (getattr(ctx.agent, "workflows", None) or {}).get(workflow, ()):
            mark = "->" if other is step else "  "
            self._write(f" {mark} {other.source or other.name}")
        self._show_source(step)

    def _layers(self, ctx: Any, record: Any) -> None:
        if record is None or record.vector is None:
            self._write("error: `layers` needs a record: stop in the execution workflow")
            return
        if self._probe is None:
            from .layers import LayerProbe

            agent = ctx.agent
            members = agent.bundle.members
            if "model.onnx" not in members:
                self._write("error: the bundle has no ONNX model, which `layers` runs (compile with --target onnx)")
                return
            activations = [layer.get("activation", "?") for layer in agent.manifest["network"]["layers"]]
            self._probe = LayerProbe(members["model.onnx"], activations)
        self._write(f"layers of record {record.record.seq + 1} (id {record.record.id!r}), from the ONNX model:")
        for stats in self._probe.stats(record.vector):
            self._write("  " + stats.line())

    def _diff(self, ctx: Any, record: Any) -> None:
        from .layers import backend_diff, other_backend

        if record is None or record.vector is None:
            self._write("error: `diff` needs a record: stop in the execution workflow")
            return
        agent = ctx.agent
        if self._twin is None:
            other = other_backend(agent)
            if other is None:
                self._write("error: the bundle holds one backend: compile with --target onnx,wasm to compare")
                return
            import afrt

            self._twin = afrt.load(agent.bundle, backend=other)
        onnx_agent, wasm_agent = (agent, self._twin) if agent.backend == "onnx" else (self._twin, agent)
        for line in backend_diff(onnx_agent, wasm_agent, record.vector).lines():
            self._write(line)

    def _fuel(self, ctx: Any) -> None:
        agent = ctx.agent
        if getattr(agent, "backend", None) != "wasm":
            self._write("fuel: the onnx backend meters nothing (run with --backend wasm)")
            return
        used, budget = agent.fuel_used, agent.fuel_per_record
        if used is None:
            self._write(f"fuel: no wasm call yet; the budget is {budget:,} per record")
            return
        self._write(f"fuel: the last call used {used:,} of its budget (at {budget:,} per record: {used / budget:.1%} "
                    "of one record's)")

    def _break(self, text: str) -> None:
        if not text.strip():
            for i, bp in enumerate(self.breakpoints, 1):
                self._write(f"  {i}: {bp} (hit {self._hits.get(bp, 0)} times)")
            if not self.breakpoints:
                self._write("no breakpoints")
            return
        try:
            bp = parse_breakpoint(text)
        except UsageError as error:
            self._write(f"error: {error.message}; {error.hint}")
            return
        self.breakpoints.append(bp)
        self._hits.setdefault(bp, 0)
        self._write(f"breakpoint {len(self.breakpoints)}: {bp}")

    def _delete(self, text: str) -> None:
        if not text.strip():
            self.breakpoints.clear()
            self._write("deleted every breakpoint")
        elif text.strip().isdigit() and 1 <= int(text) <= len(self.breakpoints):
            self._write(f"deleted breakpoint {int(text)}: {self.breakpoints.pop(int(text) - 1)}")
        else:
            self._write(f"error: no breakpoint {text.strip()} (`break` lists them)")

    def inspect(self, text: str, ctx: Any, record: Any) -> str:
        """Return the value of a field path as text (JSON-like), or why it has none.

        Args:
            text: e.g. ``output.max``, ``memory``, ``input[0]``.
            ctx: the replica's context.
            record: the record's state, or None outside the execution workflow.

        Returns:
            ``path = value`` or an error line.
        """
        try:
            expr = parse_field(text)
        except ValueError as exc:
            return f"error: {exc}"
        try:
            value = evaluate(expr, lambda root, path: _resolve(ctx, record, root, path))
        except ExecutionError as exc:
            return f"error[{exc.code}]: {exc.message}"
        return f"{expr.dotted()} = {_format(value)}"

    # source display ----------------------------------------------------------------------------

    def _show_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        note = ""
        if step.guard is not None:
            try:
                runs = bool(evaluate(step.guard, lambda root, path: resolve_field(ctx, record, root, path)))
                note = "" if runs else "  (skipped: guard is false)"
            except ExecutionError as exc:
                note = f"  (guard fails: {exc.code})"
        self._write(f"{workflow}: {step.source or step.name}{_record_text(record)}{note}")
        self._show_source(step)

    def _show_source(self, step: Step) -> None:
        span = step.span or {}
        line, column = span.get("line"), span.get("column")
        if not isinstance(line, int):
            return
        self._write(f"  --> {span.get('path', '?')}:{line}:{column}")
        if 1 <= line <= len(self._lines):
            self._write(f"{line:>5} | {self._lines[line - 1]}")


def _record_text(record: Any) -> str:
    if record is None:
        return ""
    return f" (record {record.record.seq + 1}, id {record.record.id!r})"


def _resolve(ctx: Any, record: Any, root: str, path: tuple) -> Any:
    """Like the guards' `afrt.resolve_field`, plus the bare roots: the whole input, output or memory."""
    if path:
        return resolve_field(ctx, record, root, path)
    if root == "memory":
        return dict(ctx.memory) if ctx.memory is not None else resolve_field(ctx, record, "memory", ())
    if record is None:
        raise KeyError(root)
    if root == "output":
        if record.output is None:
            raise KeyError(root)
        return record.output
    return {"id": record.record.id, "line": record.record.line, "values": record.record.values}


#: numeric lists longer than this are shown as a summary by `p` (`p input[N]` shows one value)
WIDE = 16
#: how many leading values a summary shows
WIDE_HEAD = 5


def _format(value: Any) -> str:
    """Return a value as JSON text; a numeric list longer than `WIDE` as ``<N values: min, max, first [...]>``."""
    import json

    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_format(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        if len(value) > WIDE and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            head = ", ".join(json.dumps(x) for x in value[:WIDE_HEAD])
            return f"<{len(value)} values: min {min(value)!r}, max {max(value)!r}, first [{head}, ...]>"
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return json.dumps(value, default=repr)
