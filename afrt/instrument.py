"""The `Instrument` hooks through which the debugger and the profiler observe a running swarm.

As in trio's ``trio.abc.Instrument``, every hook is an optional no-op: a subclass overrides only
the hooks it needs. The workflow runner (`afrt.workflow`) calls the hooks of the one instrument
it is given; `Instruments` is an instrument too, which fans each event out to the instruments
that override its hook (an unobserved hook costs one dict lookup). An instrument that raises is
removed (and the error logged), so that a broken profiler cannot break a run.

Which hooks cost what: the block, backend and step-time hooks (`block_start`, `block_end`,
`backend_call`, `step_timed`) are called a few times per block on whichever path runs. The
per-step hooks (`before_step`, `after_step`) are called around every step of every record: an
instrument that overrides either makes the runner take its instrumented path, record by record
(see `afrt.workflow`). `af profile` uses only the cheap hooks, so it measures the batched path
that `af run` takes; `af debug` uses the per-step ones.

Hook arguments, as the runner passes them:

- ``ctx``: the replica's `afrt.workflow.AgentContext` (``ctx.agent`` is the `afrt.Agent`,
  ``ctx.agent_id`` its id, ``ctx.memory`` its memory);
- ``workflow``: ``initialization``, ``execution`` or ``shutdown``;
- ``step``: the `afcore.steps.Step` (its ``span`` points into the .af file);
- ``record``: the `afrt.workflow.RecordState` of the record being processed, or None outside
  the execution workflow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from afcore.errors import AfError
    from afcore.steps import Step

__all__ = ["HOOKS", "Instrument", "Instruments"]

#: the hook names, in the order events happen
HOOKS = ("block_start", "backend_call", "before_step", "after_step", "step_timed", "message_sent", "trap",
         "block_end")

_log = logging.getLogger("afrt.instrument")


class Instrument:
    """Base class of runtime observers. Override any subset of the hooks; the rest do nothing.

    Hooks run synchronously in the replica's task: keep them short.
    """

    def block_start(self, ctx: Any, block: Any) -> None:
        """Called when a replica starts a block of records, before its backend call.

        Args:
            ctx: the replica's context.
            block: the `afrt.records.RecordBlock` (``seqs``, ``ids``, ``array``).
        """

    def block_end(self, ctx: Any, block: Any, outcomes: Any) -> None:
        """Called when a replica has run a block of records.

        Args:
            ctx: the replica's context.
            block: the block.
            outcomes: its `afrt.outcomes.Outcomes`.
        """

    def backend_call(self, ctx: Any, records: int, seconds: float, fuel: int | None) -> None:
        """Called after each backend call for records (not the warm-up of load_neural_network).

        Args:
            ctx: the replica's context.
            records: the records the call computed.
            seconds: its wall time where it ran (a worker thread's handoff excluded).
            fuel: wasm fuel the call used (None on onnx, or when the call failed).
        """

    def step_timed(self, ctx: Any, workflow: str, step: Step, ran: int, skipped: int, failed: int,
                   seconds: float) -> None:
        """Called after a step ran, on both paths: once per lifecycle step, once per step and block
        on the batched path, once per step and record on the instrumented path.

        Args:
            ctx: the replica's context.
            workflow: the workflow's name.
            step: the parsed step.
            ran: for how many records (1 for a lifecycle step) the step ran and succeeded.
            skipped: for how many its guard was false.
            failed: for how many it (or its guard) failed; `trap` says why.
            seconds: the wall time of the step (guard included) for all of them.
        """

    def before_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        """Called before a workflow step runs (also when its guard will skip it). Overriding it
        makes the runner take its instrumented path.

        Args:
            ctx: the replica's context.
            workflow: the workflow's name.
            step: the parsed step.
            record: the record's state, or None outside ``execution``.
        """

    def after_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        """Called after a workflow step completed; a step that raised calls `trap` instead.

        Args:
            ctx: the replica's context.
            workflow: the workflow's name.
            step: the parsed step.
            record: the record's state (with the step's effects), or None outside ``execution``.
        """

    def message_sent(self, ctx: Any, message: Any) -> None:
        """Called when a replica has published a message on the bus.

        Args:
            ctx: the sender's context.
            message: the `afrt.bus.Message` (``topic``, ``sender``, ``payload``).
        """

    def trap(self, ctx: Any, error: AfError) -> None:
        """Called when a step fails: a wasm trap, an exhausted limit, or any other af error.

        Args:
            ctx: the replica's context.
            error: the error; an `AgentTrap` has ``trap_code`` and wasm ``frames``.
        """


class Instruments(Instrument):
    """Several instruments seen as one: each event goes to those that override its hook.

    Args:
        instruments: the initial instruments.
    """

    def __init__(self, instruments: Iterable[Instrument] = ()) -> None:
        self._by_hook: dict[str, dict[Instrument, None]] = {}
        for instrument in instruments:
            self.add(instrument)

    def add(self, instrument: Instrument) -> None:
        """Start sending events to ``instrument`` (for the hooks it overrides)."""
        for hook in HOOKS:
            implementation = getattr(type(instrument), hook, None)
            if implementation is not None and implementation is not getattr(Instrument, hook):
                self._by_hook.setdefault(hook, {})[instrument] = None

    def remove(self, instrument: Instrument) -> None:
        """Stop sending events to ``instrument``.

        Raises:
            KeyError: when it was not added.
        """
        found = False
        for hook in list(self._by_hook):
            found |= self._by_hook[hook].pop(instrument, False) is None
            if not self._by_hook[hook]:
                del self._by_hook[hook]
        if not found:
            raise KeyError(f"instrument {instrument!r} is not active")

    def wants(self, hook: str) -> bool:
        """Return whether any instrument listens to ``hook`` (to skip building costly arguments)."""
        return hook in self._by_hook

    def call(self, hook: str, *args: Any) -> None:
        """Send an event to every instrument that overrides ``hook``.

        Args:
            hook: one of `HOOKS`.
            args: the hook's arguments.
        """
        if hook not in self._by_hook:
            return
        for instrument in list(self._by_hook[hook]):
            try:
                getattr(instrument, hook)(*args)
            except Exception:  # an observer must not break the run: drop it, as trio does
                _log.exception("instrument %r raised in %s and was removed", instrument, hook)
                self.remove(instrument)

    def block_start(self, ctx: Any, block: Any) -> None:
        self.call("block_start", ctx, block)

    def block_end(self, ctx: Any, block: Any, outcomes: Any) -> None:
        self.call("block_end", ctx, block, outcomes)

    def backend_call(self, ctx: Any, records: int, seconds: float, fuel: int | None) -> None:
        self.call("backend_call", ctx, records, seconds, fuel)

    def step_timed(self, ctx: Any, workflow: str, step: Step, ran: int, skipped: int, failed: int,
                   seconds: float) -> None:
        self.call("step_timed", ctx, workflow, step, ran, skipped, failed, seconds)

    def before_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        self.call("before_step", ctx, workflow, step, record)

    def after_step(self, ctx: Any, workflow: str, step: Step, record: Any) -> None:
        self.call("after_step", ctx, workflow, step, record)

    def message_sent(self, ctx: Any, message: Any) -> None:
        self.call("message_sent", ctx, message)

    def trap(self, ctx: Any, error: AfError) -> None:
        self.call("trap", ctx, error)

    def __bool__(self) -> bool:
        return bool(self._by_hook)
