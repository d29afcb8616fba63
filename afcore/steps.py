"""The step vocabulary, parsed workflow steps and guard expressions, shared by the compiler and the runtime.

`STEP_DEFS` is the one table of the steps: their arguments, the workflows they may stand in,
whether they run per record, and the guard fields they make available. `GUARD_FIELDS` and
`field_type` say which guard fields exist and what type each has. The compiler's checks
(`afc.check`) read them to report mistakes at `af validate`; the runtime (`afrt.steps`) binds an
implementation to each name and refuses to start when the two disagree.

The compiler (`afc.expr`) parses step strings such as
``send_output(topic="task.completion") when output.max > 0.9`` into these trees once; the
bundle manifest stores them as JSON (`Step.to_json`); the runtime rebuilds them with
`Step.from_json` and evaluates guards with `evaluate`. Nothing here ever calls ``eval``.

JSON forms of expressions::

    {"const": 0.9}                            a literal: number, string, bool or null
    {"field": ["output", "max"]}              a field path; ints in the path index lists
    {"op": "not", "args": [e]}                unary: "not", "neg"
    {"op": ">", "args": [e1, e2]}             binary: and or == != < <= > >= + - * / %
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

from .errors import ExecutionError

__all__ = [
    "ARITHMETIC_OPERATORS",
    "ArgDef",
    "BINARY_OPERATORS",
    "Binary",
    "COMPARISONS",
    "Const",
    "Expr",
    "Field",
    "FIELD_ROOTS",
    "GUARD_FIELDS",
    "MAX_TOPIC_CHARS",
    "MEMORY_FIELDS",
    "ORDERING_COMPARISONS",
    "STEP_DEFS",
    "Step",
    "StepDef",
    "Unary",
    "WORKFLOWS",
    "evaluate",
    "expr_from_json",
    "field_type",
    "iter_fields",
    "learning_step",
    "value_type",
]

#: the roots a field path may start with: the record being processed, the network's result, agent memory
FIELD_ROOTS = ("input", "output", "memory")

Literal = Union[int, float, str, bool, None]

#: the workflows an agent declares, in the order they run
WORKFLOWS = ("initialization", "execution", "shutdown")


@dataclass(frozen=True)
class ArgDef:
    """One argument of a step: its type, its default, and the values it may take.

    ``minimum`` is the smallest value an integer may take; a float argument must be greater than
    ``above`` (an integer literal is taken for a float); a string argument must be one of
    ``choices`` when they are given.
    """

    type: type
    default: Any
    minimum: int | None = None
    doc: str = ""
    above: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StepDef:
    """What the toolchain knows of a step before anything runs.

    Args:
        name: the step's name as written in a workflow.
        workflows: the workflows it may stand in.
        per_record: True for the steps that need an input record (they run once per record).
        arguments: argument name -> `ArgDef`.
        provides: the guard roots defined for the steps after it (``output`` after
            process_neural_network).
        summary: one line for help texts and "did you mean" lists.
    """

    name: str
    workflows: frozenset[str]
    per_record: bool = False
    arguments: Mapping[str, ArgDef] = field(default_factory=dict)
    provides: frozenset[str] = frozenset()
    summary: str = ""


_INIT, _EXEC, _SHUT = (frozenset({w}) for w in WORKFLOWS)

#: every step an agent may use, in the order docs/steps.md lists them
STEP_DEFS: Mapping[str, StepDef] = {
    d.name: d
    for d in (
        StepDef("load_neural_network", _INIT, summary="make the network ready (one warm-up call)"),
        StepDef("initialize_memory", _INIT, summary="create the memory, or restore the last checkpoint"),
        StepDef("connect_to_swarm", _INIT, summary="join the swarm's bus"),
        StepDef("register_capabilities", _INIT, summary="announce name, version and signature"),
        StepDef("receive_input", _EXEC, per_record=True, summary="take the record's input vector"),
        StepDef("process_neural_network", _EXEC, per_record=True, provides=frozenset({"output"}),
                summary="run the network; its result becomes `output`"),
        StepDef("update_memory", _EXEC, per_record=True,
                arguments={"window": ArgDef(int, None, 1, "mean_max over the last N records")},
                summary="fold the record into memory"),
        StepDef("send_output", _EXEC, per_record=True,
                arguments={"topic": ArgDef(str, "task.completion", None, "where the result is published")},
                summary="publish the result; it becomes the output record"),
        StepDef("update_weights", _EXEC, per_record=True,
                arguments={
                    "learning_rate": ArgDef(float, None, None, "the step size (rprop: the first step); default "
                                            "neural_config.learning_rate, else 0.01 (adam 0.001)", above=0.0),
                    "every": ArgDef(int, 1, 1, "one optimizer step per N records that carry a target"),
                    "optimizer": ArgDef(str, "sgd", None, "sgd, adam or rprop (afcore.learning)",
                                        choices=("sgd", "adam", "rprop")),
                },
                summary="learn from the records that carry a target (online learning)"),
        StepDef("save_state", frozenset(WORKFLOWS),
                arguments={"every": ArgDef(int, 1, 1, "in execution: a checkpoint every N records")},
                summary="write a checkpoint"),
        StepDef("disconnect_from_swarm", _SHUT, summary="leave the swarm's bus"),
        StepDef("cleanup_resources", _SHUT, summary="release the backend"),
    )
}

#: the fields of ``memory`` and their guard types (``any``: may be null, or of several types)
MEMORY_FIELDS: Mapping[str, str] = {
    "count": "number", "errors": "number", "last_id": "any", "last_output": "list", "last_argmax": "any",
    "last_max": "any", "mean_max": "number", "class_counts": "mapping", "checkpoints": "number",
    "started": "number",
}

#: root -> named field -> guard type (integer parts such as ``input[3]`` index a vector: numbers)
GUARD_FIELDS: Mapping[str, Mapping[str, str]] = {
    "input": {"id": "any", "size": "number", "line": "number"},
    "output": {"max": "number", "min": "number", "sum": "number", "mean": "number", "argmax": "number",
               "size": "number"},
    "memory": MEMORY_FIELDS,
}

#: the longest topic name `send_output(topic=...)` takes
MAX_TOPIC_CHARS = 200

#: comparisons; the ordering ones need two numbers or two strings
COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})
ORDERING_COMPARISONS = frozenset({"<", "<=", ">", ">="})
#: arithmetic needs numbers (``+`` also joins two strings)
ARITHMETIC_OPERATORS = frozenset({"+", "-", "*", "/", "%"})


def learning_step(execution: Iterable[Step]) -> Step | None:
    """Return the ``update_weights`` step of an execution workflow (online learning), or None when the
    agent does not learn: what the compiler (the ONNX model takes its weights as inputs), the loader
    (writable weights) and the runner (the learner) each ask."""
    return next((step for step in execution if step.name == "update_weights"), None)


def field_type(root: str, path: tuple[str | int, ...]) -> str | None:
    """Return the guard type of a field (``number``, ``list``, ``mapping``, ``any``), or None when
    no such field exists."""
    fields = GUARD_FIELDS.get(root)
    if fields is None or not path:
        return None
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        kind = "number" if root in ("input", "output") else None
    else:
        kind = fields.get(head)
    for part in rest:
        if kind == "list" and isinstance(part, int):
            kind = "number"
        elif kind == "mapping":
            kind = "number"  # class_counts.<class>: a count (absent classes fail at run time)
        elif kind != "any":
            return None
    return kind


def value_type(value: Any) -> str:
    """Return the guard type of a literal."""
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return "number"  # Python compares booleans as numbers, so guards may too
    return "string"


def iter_fields(expr: Expr) -> Any:
    """Yield every `Field` of an expression, left to right."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Field):
            yield node
        elif isinstance(node, Unary):
            stack.append(node.operand)
        elif isinstance(node, Binary):
            stack += (node.right, node.left)


@dataclass(frozen=True)
class Const:
    """A literal value."""

    value: Literal

    def to_json(self) -> dict[str, Any]:
        return {"const": self.value}


@dataclass(frozen=True)
class Field:
    """A field path such as ``output.max`` or ``memory.count``: ``root`` is one of `FIELD_ROOTS`."""

    root: str
    path: tuple[str | int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"field": [self.root, *self.path]}

    def dotted(self) -> str:
        """Return the path as written, e.g. ``output.max``."""
        parts = [self.root]
        for part in self.path:
            parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
        return "".join(parts)


@dataclass(frozen=True)
class Unary:
    """``not e`` or ``-e`` (op ``neg``)."""

    op: str
    operand: Expr

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "args": [self.operand.to_json()]}


@dataclass(frozen=True)
class Binary:
    """A binary operation; ``op`` is one of `BINARY_OPERATORS` or ``and``/``or``."""

    op: str
    left: Expr
    right: Expr

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "args": [self.left.to_json(), self.right.to_json()]}


Expr = Union[Const, Field, Unary, Binary]


def _modulo(a: float, b: float) -> float:
    # Python's % on floats; a zero divisor is the author's mistake, reported as an execution error.
    return a % b


#: binary operators other than the short-circuit ``and``/``or``
BINARY_OPERATORS: Mapping[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": _modulo,
}


def expr_from_json(data: Any) -> Expr:
    """Rebuild an expression from its JSON form.

    Raises:
        ValueError: when ``data`` is not a well-formed expression.
    """
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise ValueError(f"not an expression: {data!r}")
    if "const" in data:
        value = data["const"]
        if value is not None and not isinstance(value, (int, float, str, bool)):
            raise ValueError(f"bad constant {value!r}")
        return Const(value)
    if "field" in data:
        parts = data["field"]
        if not isinstance(parts, list) or not parts or parts[0] not in FIELD_ROOTS:
            raise ValueError(f"bad field path {parts!r}")
        if not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in parts[1:]):
            raise ValueError(f"bad field path {parts!r}")
        return Field(parts[0], tuple(parts[1:]))
    op, args = data.get("op"), data.get("args")
    if not isinstance(args, list):
        raise ValueError(f"bad operands in {data!r}")
    if op in ("not", "neg") and len(args) == 1:
        return Unary(op, expr_from_json(args[0]))
    if (op in BINARY_OPERATORS or op in ("and", "or")) and len(args) == 2:
        return Binary(op, expr_from_json(args[0]), expr_from_json(args[1]))
    raise ValueError(f"unknown operator {op!r}")


#: resolves a field: (root, path) -> value; raises KeyError/IndexError/TypeError for a missing field
Resolver = Callable[[str, tuple], Any]


def evaluate(expr: Expr, resolve: Resolver) -> Any:
    """Evaluate a guard expression.

    Args:
        expr: the tree.
        resolve: looks up a `Field`; see `Resolver`.

    Returns:
        The value; guards use its truth.

    Raises:
        ExecutionError: AF5201 for a missing field, AF5202 for an operation on the wrong types
            or a division by zero.
    """
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Field):
        try:
            return resolve(expr.root, expr.path)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ExecutionError(
                f"field `{expr.dotted()}` does not exist here",
                code="AF5201",
                hint="see docs/steps.md for the fields of input, output and memory",
            ) from None
    if isinstance(expr, Unary):
        value = evaluate(expr.operand, resolve)
        if expr.op == "not":
            return not value
        return _apply("neg", operator.neg, value)
    if expr.op == "and":
        return evaluate(expr.left, resolve) and evaluate(expr.right, resolve)
    if expr.op == "or":
        return evaluate(expr.left, resolve) or evaluate(expr.right, resolve)
    left = evaluate(expr.left, resolve)
    right = evaluate(expr.right, resolve)
    return _apply(expr.op, BINARY_OPERATORS[expr.op], left, right)


#: the longest string a guard may build (``"ab" * n``); longer is the record's AF5202, not a MemoryError
MAX_GUARD_STRING = 65_536


def _apply(name: str, fn: Callable[..., Any], *values: Any) -> Any:
    if name == "*" and any(isinstance(v, str) for v in values) and _repeated_length(*values) > MAX_GUARD_STRING:
        raise ExecutionError(f"`*` would build a string longer than {MAX_GUARD_STRING:,} characters", code="AF5202")
    try:
        result = fn(*values)
    except (TypeError, ZeroDivisionError, ValueError, OverflowError) as exc:
        raise ExecutionError(
            f"cannot apply `{name}` to {', '.join(repr(v) for v in values)}: {exc}",
            code="AF5202",
        ) from None
    if isinstance(result, float) and not math.isfinite(result) and all(_finite(v) for v in values):
        # an overflow to infinity (or NaN from `/`, `%`) would make the guard's verdict meaningless
        what = "NaN" if math.isnan(result) else "infinity"
        raise ExecutionError(f"`{name}` gave {what} for {', '.join(repr(v) for v in values)}", code="AF5202")
    return result


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _repeated_length(left: Any, right: Any) -> int:
    text, count = (left, right) if isinstance(left, str) else (right, left)
    return len(text) * count if isinstance(count, int) else 0


@dataclass(frozen=True)
class Step:
    """One parsed workflow step: ``name(key=literal, ...) when <guard>``.

    ``source`` is the step's text as written and ``span`` (a JSON span dict, see
    `afcore.spans.Span.to_json`) where it stands in the .af file, for messages and the debugger.
    """

    name: str
    args: Mapping[str, Literal] = field(default_factory=dict)
    guard: Expr | None = None
    source: str = ""
    span: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the manifest form of the step."""
        return {
            "name": self.name,
            "args": dict(self.args),
            "when": self.guard.to_json() if self.guard is not None else None,
            "source": self.source,
            "span": dict(self.span) if self.span else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        """Rebuild a step from its manifest form.

        Raises:
            ValueError: when ``data`` is malformed.
        """
        name = data.get("name")
        args = data.get("args") or {}
        if not isinstance(name, str) or not isinstance(args, dict):
            raise ValueError(f"bad step {data!r}")
        guard = data.get("when")
        return cls(
            name=name,
            args=dict(args),
            guard=expr_from_json(guard) if guard is not None else None,
            source=str(data.get("source") or name),
            span=data.get("span"),
        )
