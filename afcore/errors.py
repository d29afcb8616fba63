"""The one exception tree of af.

```
AfError                      root; never raised directly
├── SourceError              .diagnostics: list[Diagnostic] (each has a span)
│   ├── ParseError           container/YAML/expression syntax (AF0xxx)
│   ├── SchemaError          JSON-schema violations (AF1xxx)
│   └── CheckError           semantic errors (AF2xxx)
├── LoweringError            ONNX/wasm generation (AF3xxx)
├── BundleError              corrupt/incompatible bundle (AF4xxx)
├── ExecutionError           .span, .agent (AF5xxx)
│   ├── AgentTrap            .trap_code, .frames → spans
│   ├── ResourceLimitError   fuel/memory/disk exhausted
│   ├── SandboxViolation     undeclared host call or capability
│   ├── InferenceError
│   ├── StateError           corrupt or unreadable checkpoint
│   └── BusError → ChannelClosedError, MailboxFullError
├── UsageError               bad command-line or API arguments (exit code 2)
└── InternalError            a bug in af: "please report this"
```

Training (`afc.train`, AF6000-AF6049) has no class of its own: it raises `UsageError` (bad options,
unreadable data files), `CheckError` (faults in the data) and `ExecutionError` (a diverging run)
with codes of its range.

Every error carries a stable ``code`` (documented in docs/diagnostics.md) so that scripts
and the JSON output can rely on it. ``af`` renders any ``AfError`` as diagnostics and exits
with ``exit_code``; any other exception is a bug.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .diagnostics import Diagnostic
    from .spans import Span

__all__ = [
    "AfError",
    "AgentTrap",
    "BundleError",
    "BusError",
    "ChannelClosedError",
    "CheckError",
    "ExecutionError",
    "InferenceError",
    "InternalError",
    "LoweringError",
    "MailboxFullError",
    "ParseError",
    "ResourceLimitError",
    "SandboxViolation",
    "SchemaError",
    "SourceError",
    "StateError",
    "UsageError",
]


class AfError(Exception):
    """Root of every error af raises on purpose. Never raised directly."""

    #: the code used when the raiser gives none
    default_code = "AF9000"
    #: the process exit code `af` uses for this error
    exit_code = 1

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.hint = hint

    def to_diagnostics(self) -> list[Diagnostic]:
        """Return this error as diagnostics, the one form `af` reports errors in."""
        from .diagnostics import Diagnostic

        return [Diagnostic(self.code, "error", self.message, span=getattr(self, "span", None), help=self.hint)]


class SourceError(AfError):
    """Raised at the end of a pass over a source file that found one or more errors.

    ``diagnostics`` holds every finding of the pass (warnings included), sorted by position.
    """

    default_code = "AF0000"

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        from .diagnostics import sort_diagnostics

        self.diagnostics = sort_diagnostics(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"]
        first = errors[0] if errors else self.diagnostics[0]
        count = len(errors)
        summary = first.message if count == 1 else f"{first.message} (and {count - 1} more errors)"
        super().__init__(summary, code=first.code, hint=first.help)

    def to_diagnostics(self) -> list[Diagnostic]:
        return list(self.diagnostics)


class ParseError(SourceError):
    """Raised when the container framing, the YAML or a step expression cannot be parsed (AF0xxx)."""


class SchemaError(SourceError):
    """Raised when the header breaks the JSON schema `schemas/af-1.0.schema.json` (AF1xxx)."""


class CheckError(SourceError):
    """Raised when a schema-valid file is still meaningless: shapes, names, limits (AF2xxx)."""


class LoweringError(AfError):
    """Raised when a valid agent cannot be lowered to ONNX or WebAssembly (AF3xxx)."""

    default_code = "AF3000"


class BundleError(AfError):
    """Raised when a bundle is corrupt, tampered with, unsafe or of an unsupported version (AF4xxx)."""

    default_code = "AF4000"


class ExecutionError(AfError):
    """Raised while an agent runs (AF5xxx). ``agent`` names the agent; ``span`` points at the step."""

    default_code = "AF5000"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        agent: str | None = None,
        span: Span | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint)
        self.agent = agent
        self.span = span


class AgentTrap(ExecutionError):
    """Raised when the sandboxed module traps (unreachable, out-of-bounds access, bad return code)."""

    default_code = "AF5001"

    def __init__(self, message: str, *, trap_code: str | None = None, frames: Sequence[object] = (), **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.trap_code = trap_code
        self.frames = list(frames)


class ResourceLimitError(ExecutionError):
    """Raised when an agent exceeds a declared limit: fuel, memory, disk or bandwidth."""

    default_code = "AF5002"


class SandboxViolation(ExecutionError):
    """Raised when a module asks for an import or capability the sandbox policy does not grant."""

    default_code = "AF5003"


class InferenceError(ExecutionError):
    """Raised when a backend refuses an input or fails while computing (bad shape, NaN policy, engine error)."""

    default_code = "AF5004"


class StateError(ExecutionError):
    """Raised when a checkpoint in the state directory is corrupt, truncated or not ours."""

    default_code = "AF5005"


class BusError(ExecutionError):
    """Raised by the swarm message bus."""

    default_code = "AF5100"


class ChannelClosedError(BusError):
    """Raised when sending to or receiving from a closed channel."""

    default_code = "AF5101"


class MailboxFullError(BusError):
    """Raised by a non-blocking send when the receiver's bounded mailbox is full."""

    default_code = "AF5102"


class UsageError(AfError, ValueError):
    """Raised when a command or API call is given arguments it cannot use (exit code 2)."""

    default_code = "AF0900"
    exit_code = 2


class InternalError(AfError):
    """Raised when af finds a bug in itself. Please report it."""

    default_code = "AF9999"
