"""The `Instrument` hooks through which the debugger and the profiler observe a running swarm.

As in trio's ``trio.abc.Instrument``, every hook is an optional no-op: a subclass overrides only
the hooks it needs, and `Instruments` dispatches each event only to the instruments that
override its hook, so that an unobserved swarm pays one dict lookup per event. An instrument
that raises is removed (and the error logged), so a broken profiler cannot break a run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from afcore.errors import ExecutionError
    from afcore.steps import Step

__all__ = ["HOOKS", "Instrument", "Instruments"]

#: the hook names, in the order events happen
HOOKS = ("before_step", "after_step", "message_sent", "trap")

_log = logging.getLogger("afrt.instrument")


class Instrument:
    """Base class of runtime observers. Override any subset of the hooks; the rest do nothing.

    Hooks run synchronously in the agent's task: keep them short.
    """

    __slots__ = ()

    def before_step(self, agent: str, workflow: str, step: Step, context: Mapping[str, Any]) -> None:
        """Called before a workflow step runs.

        Args:
            agent: the agent's id.
            workflow: ``initialization``, ``execution`` or ``shutdown``.
            step: the parsed step (its ``span`` points into the .af file).
            context: what the step sees: ``input``, ``output``, ``memory`` (read-only by convention).
        """

    def after_step(
        self, agent: str, workflow: str, step: Step, context: Mapping[str, Any], error: BaseException | None
    ) -> None:
        """Called after a workflow step ran (or was skipped by its guard).

        Args:
            agent: the agent's id.
            workflow: the workflow's name.
            step: the parsed step.
            context: as for `before_step`, after the step's effects.
            error: the error the step raised, or None.
        """

    def message_sent(self, agent: str, topic: str, message: Mapping[str, Any]) -> None:
        """Called when an agent publishes a message on the bus.

        Args:
            agent: the sender's id.
            topic: e.g. ``task.completion``.
            message: the message as published.
        """

    def trap(self, agent: str, error: ExecutionError) -> None:
        """Called when an agent's backend traps or exceeds a limit (the record then fails).

        Args:
            agent: the agent's id.
            error: the `AgentTrap` or `ResourceLimitError`; ``error.frames`` holds wasm frames.
        """


class Instruments:
    """The set of active instruments and the dispatch of events to them.

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
            if getattr(type(instrument), hook) is not getattr(Instrument, hook):
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

    def __bool__(self) -> bool:
        return bool(self._by_hook)
