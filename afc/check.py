"""Semantic checks of a header and its sections (AF2001-AF2099).

The schema says a header is well-formed; these checks say it means something: the weights fit
`neural_config`, the training data fits the network, requirements fit within limits, and every
workflow step is a known step with known arguments. Each check returns diagnostics; none raises.

The checks also run on a header that breaks the schema elsewhere, so that one run reports every
error: each reads only nodes that ``valid`` (`afc.validate.SchemaReport.is_valid`) accepts and
stays silent about what depends on an invalid node, rather than guessing from it.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping

from afcore.diagnostics import Diagnostic
from afcore.errors import ParseError
from afcore.spans import Span
from afcore.steps import (
    ARITHMETIC_OPERATORS, COMPARISONS, GUARD_FIELDS, MAX_TOPIC_CHARS, ORDERING_COMPARISONS, STEP_DEFS, ArgDef,
    Const, Field, Unary, field_type, iter_fields, value_type,
)

from .expr import parse_step, step_locator
from .spec import WORKFLOW_NAMES

if TYPE_CHECKING:
    import numpy as np

    from afcore.steps import Expr, Step

    from .reader import RawSection
    from .yamlload import YamlDocument

__all__ = [
    "REQUIREMENT_LIMITS",
    "STEP_SIGNATURES",
    "check_interop_fields",
    "check_learning",
    "check_resources",
    "check_steps",
    "check_training_data",
    "check_weights",
    "expected_weight_shapes",
    "parse_workflows",
]

#: step name -> argument name -> type: a view of `afcore.steps.STEP_DEFS`, the one table of the steps
STEP_SIGNATURES: Mapping[str, Mapping[str, type]] = {
    name: {arg: spec.type for arg, spec in d.arguments.items()} for name, d in STEP_DEFS.items()
}

#: requirement key -> the limit it must not exceed
REQUIREMENT_LIMITS: Mapping[str, str] = {
    "minimum_memory_mb": "memory_mb",
    "minimum_cpu_cores": "cpu_cores",
    "minimum_disk_mb": "disk_mb",
    "minimum_network_bandwidth_mbps": "network_bandwidth_mbps",
}

#: step strings longer than this are left to the schema (maxLength) rather than parsed
MAX_STEP_CHARS = 1024

_TYPE_NAMES = {int: "an integer", str: "a string", float: "a number", bool: "true or false"}

#: the `neural_config` keys that fix the tensors of `neural_weights`
_NETWORK_KEYS = ("input_size", "hidden_layers", "output_size")
#: the `neural_config` keys that fix the shapes of `training_data`
_DATA_KEYS = ("input_size", "output_size")

#: a predicate on instance paths: does the node satisfy the schema?
Validity = Callable[[tuple], bool]


def _all_valid(path: tuple) -> bool:
    return True


def parse_workflows(document: YamlDocument) -> tuple[dict[str, tuple[Step, ...]], list[Diagnostic]]:
    """Parse every step string of the header's workflows.

    Works on headers that failed the schema too: whatever is a string in a workflow list is parsed,
    so that syntax errors are reported in the same run as schema errors.

    Args:
        document: the parsed header.

    Returns:
        The parsed steps per workflow (a step that does not parse is left out) and the AF007x diagnostics.
    """
    workflows = document.data.get("workflows") if isinstance(document.data, dict) else None
    parsed: dict[str, tuple[Step, ...]] = {}
    diagnostics: list[Diagnostic] = []
    if not isinstance(workflows, dict):
        return parsed, diagnostics
    for name in WORKFLOW_NAMES:
        items = workflows.get(name)
        if not isinstance(items, list):
            continue
        steps = []
        for index, text in enumerate(items):
            if not isinstance(text, str) or len(text) > MAX_STEP_CHARS:
                continue
            path = ("workflows", name, index)
            try:
                steps.append(parse_step(text, locate=step_locator(document, path), span=document.span_of(path)))
            except ParseError as error:
                diagnostics.extend(error.diagnostics)
        parsed[name] = tuple(steps)
    return parsed, diagnostics


def check_steps(document: YamlDocument, workflows: Mapping[str, tuple[Step, ...]]) -> list[Diagnostic]:
    """Check each step against `afcore.steps.STEP_DEFS`: name, place, arguments and guard.

    Args:
        document: the parsed header (to point carets at a step's name).
        workflows: the parsed steps from `parse_workflows`.

    Returns:
        AF2020 unknown step, AF2021 unknown argument, AF2022 argument of the wrong type, AF2023 a
        step in a workflow where it cannot run, AF2024 a guard field that does not exist, AF2025 a
        guard field not defined at that point, AF2026 a guard operation on incompatible types,
        AF2027 an argument out of range.
    """
    # No schema predicate needed: `parse_workflows` keeps only steps that are strings of 1 to
    # MAX_STEP_CHARS characters inside a list of a known workflow, which is all the schema asks.
    diagnostics: list[Diagnostic] = []
    for workflow, steps in workflows.items():
        provided: set[str] = set()
        for step in steps:
            span = Span.from_json(dict(step.span)) if step.span else None
            definition = STEP_DEFS.get(step.name)
            if definition is None:
                diagnostics.append(_unknown_step(step, _text_span(document, span, step.source, 0, len(step.name))))
                provided.add("output")  # it may be a misspelt process_neural_network: no cascade of errors
                continue
            if workflow not in definition.workflows:
                diagnostics.append(_misplaced(step, workflow, _text_span(document, span, step.source, 0, len(step.name))))
            diagnostics += _check_arguments(document, step, STEP_SIGNATURES[step.name], span)
            if step.guard is not None:
                diagnostics += _check_guard(document, step, workflow, provided, span)
            provided |= definition.provides
    return diagnostics


def check_learning(document: YamlDocument, workflows: Mapping[str, tuple[Step, ...]]) -> list[Diagnostic]:
    """Check where ``update_weights`` stands: once, after ``process_neural_network``.

    A record is predicted before the agent learns from it (its output is what the weights before
    it made of it); a second update_weights would learn from each record twice.

    Returns:
        AF6110 for an update_weights with no process_neural_network before it, AF6111 for a second one.
    """
    out, processed, learning = [], False, False
    for step in workflows.get("execution", ()):
        if step.name == "process_neural_network":
            processed = True
        if step.name != "update_weights":
            continue
        span = Span.from_json(dict(step.span)) if step.span else None
        span = _text_span(document, span, step.source, 0, len(step.name))
        if learning:
            out.append(Diagnostic("AF6111", "error", "a second `update_weights` in the execution workflow", span=span,
                                  label="the agent would learn from each record twice",
                                  help="keep one update_weights step"))
        elif not processed:
            out.append(Diagnostic("AF6110", "error", "`update_weights` stands before `process_neural_network`",
                                  span=span, label="no output yet",
                                  help="put update_weights after process_neural_network: a record is predicted, "
                                       "then learnt from (docs/training.md, \"Online learning\")"))
        learning = True
    return out


def _misplaced(step: Step, workflow: str, span: Span | None) -> Diagnostic:
    places = " and ".join(f"`{w}`" for w in sorted(STEP_DEFS[step.name].workflows))
    return Diagnostic("AF2023", "error", f"step `{step.name}` cannot run in the `{workflow}` workflow", span=span,
                      label=f"not a step of `{workflow}`", help=f"move it to {places} (see docs/steps.md)")


def _check_guard(document: YamlDocument, step: Step, workflow: str, provided: set[str],
                 span: Span | None) -> list[Diagnostic]:
    """Check that each field of ``step``'s guard exists and is defined there, and that the types fit."""
    out = []
    for found in iter_fields(step.guard):
        at = _text_span(document, span, step.source, *_find(step.source, found.dotted()))
        if field_type(found.root, found.path) is None:
            out.append(_unknown_field(found, at))
        elif found.root in ("input", "output") and workflow != "execution":
            out.append(Diagnostic("AF2025", "error", f"`{found.dotted()}` is not defined in `{workflow}`", span=at,
                                  label="no record here",
                                  help=f"`{found.root}` fields exist only in the execution workflow"))
        elif found.root == "output" and "output" not in provided:
            out.append(Diagnostic("AF2025", "error", f"`{found.dotted()}` is not defined before "
                                  "`process_neural_network`", span=at, label="no output yet",
                                  help="move the step after process_neural_network, or guard on `input` or `memory`"))
    if not out:
        problem = _type_problem(step.guard)
        if problem is not None:
            out.append(Diagnostic("AF2026", "error", problem[0], span=span, label="these types do not fit",
                                  help=problem[1]))
    return out


def _find(source: str, text: str) -> tuple[int, int]:
    """Return (offset, length) of ``text`` in the step's source, or of the whole source."""
    at = source.find(text)
    return (at, len(text)) if at >= 0 else (0, len(source))


def _unknown_field(found: Field, span: Span | None) -> Diagnostic:
    names = [f"{found.root}.{name}" for name in GUARD_FIELDS[found.root]]
    close = difflib.get_close_matches(found.dotted(), names, n=1, cutoff=0.6)
    hint = (f"did you mean `{close[0]}`?" if close
            else f"the fields of `{found.root}`: {', '.join(f'`{n}`' for n in names)} (see docs/steps.md)")
    return Diagnostic("AF2024", "error", f"guard field `{found.dotted()}` does not exist", span=span,
                      label="no such field", help=hint)


def _type_problem(expr: Expr) -> tuple[str, str] | None:
    """Return (message, help) for the first operation on incompatible types in ``expr``, else None."""
    try:
        _guard_type(expr)
    except _TypeClash as clash:
        return clash.args[0], clash.args[1]
    return None


class _TypeClash(Exception):
    pass


def _guard_type(expr: Expr) -> str:
    """Return the guard type of ``expr`` (number, string, null, list, mapping or any).

    Raises:
        _TypeClash: for an operation whose operands can never fit.
    """
    if isinstance(expr, Const):
        return value_type(expr.value)
    if isinstance(expr, Field):
        return field_type(expr.root, expr.path) or "any"
    if isinstance(expr, Unary):
        operand = _guard_type(expr.operand)
        if expr.op == "neg" and operand not in ("number", "any"):
            raise _TypeClash(f"cannot negate {_described(operand)}", "`-` applies to numbers")
        return "number"  # `not` gives true or false, which compare as numbers
    left, right = _guard_type(expr.left), _guard_type(expr.right)
    if expr.op in ("and", "or") or "any" in (left, right):
        return "number" if expr.op in COMPARISONS else "any"
    if expr.op in ORDERING_COMPARISONS and not (left == right and left in ("number", "string")):
        raise _TypeClash(f"cannot compare {_described(left)} with {_described(right)} using `{expr.op}`",
                         "`<`, `<=`, `>` and `>=` compare two numbers or two strings")
    if expr.op in ARITHMETIC_OPERATORS:
        if left == right == "number" or (expr.op == "+" and left == right == "string"):
            return left
        raise _TypeClash(f"cannot apply `{expr.op}` to {_described(left)} and {_described(right)}",
                         "arithmetic applies to numbers (and `+` to two strings)")
    return "number"  # == and != compare anything: the result is true or false


def _described(kind: str) -> str:
    return {"number": "a number", "string": "a string", "null": "null", "list": "a list",
            "mapping": "a mapping"}.get(kind, kind)


def _unknown_step(step: Step, span: Span | None) -> Diagnostic:
    close = difflib.get_close_matches(step.name, list(STEP_DEFS), n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`?" if close else "the steps are listed in docs/steps.md"
    return Diagnostic("AF2020", "error", f"unknown step `{step.name}`", span=span,
                      label="not a known step", help=hint)


def _check_arguments(document: YamlDocument, step: Step, signature: Mapping[str, type],
                     span: Span | None) -> list[Diagnostic]:
    out = []
    for key, value in step.args.items():
        wanted = signature.get(key)
        found_at = re.search(rf"\b{re.escape(key)}\s*=", step.source)
        at = _text_span(document, span, step.source, found_at.start() if found_at else 0, len(key))
        if wanted is None:
            allowed = ", ".join(f"`{k}`" for k in signature) or "none"
            close = difflib.get_close_matches(key, list(signature), n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"arguments of `{step.name}`: {allowed}"
            out.append(Diagnostic("AF2021", "error", f"step `{step.name}` has no argument `{key}`", span=at,
                                  label="unknown argument", help=hint))
        elif type(value) is not wanted and not (wanted is float and type(value) is int):
            found = _TYPE_NAMES.get(type(value), "null" if value is None else type(value).__name__)
            out.append(Diagnostic("AF2022", "error",
                                  f"argument `{key}` of `{step.name}` must be {_TYPE_NAMES[wanted]}, not {found}",
                                  span=at, label=f"found {found}", help=_argument_example(step.name, key, wanted)))
        else:
            problem = _out_of_range(STEP_DEFS[step.name].arguments[key], value)
            if problem:
                out.append(Diagnostic("AF2027", "error", f"argument `{key}` of `{step.name}` {problem}", span=at,
                                      label="out of range", help=_argument_example(step.name, key, wanted)))
    return out


def _out_of_range(definition: ArgDef, value: Any) -> str | None:
    if isinstance(value, int) and definition.minimum is not None and value < definition.minimum:
        return f"must be at least {definition.minimum}, found {value}"
    if definition.above is not None and not (math.isfinite(value) and value > definition.above):
        return f"must be a finite number above {definition.above:g}, found {value}"
    if definition.choices is not None and value not in definition.choices:
        return f"must be one of {', '.join(definition.choices)}, found {value!r}"
    if isinstance(value, str) and not 1 <= len(value) <= MAX_TOPIC_CHARS:
        return f"must be 1 to {MAX_TOPIC_CHARS} characters, found {len(value)}"
    return None


def _argument_example(step: str, key: str, wanted: type) -> str:
    choices = STEP_DEFS[step].arguments[key].choices
    example = f'"{choices[0]}"' if choices else '"results"' if wanted is str else "0.01" if wanted is float else "100"
    return f"e.g. `{step}({key}={example})`"


def _text_span(document: YamlDocument, span: Span | None, source: str, offset: int, length: int) -> Span | None:
    """Narrow a step string's span to ``length`` characters at ``offset`` when the text stands in the file as-is."""
    if span is None or span.end_line != span.line:
        return span
    line = document.source.line_text(span.line)
    start = span.column + (1 if line[span.column - 1 : span.column] in ("'", '"') else 0)
    if line[start - 1 : start - 1 + len(source)] != source:
        return span  # escapes or folding: keep the whole string
    return Span(span.path, span.line, start + offset, span.line, start + offset + length)


def expected_weight_shapes(neural_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Return the tensors `neural_weights` must hold for a network, with their shapes.

    Args:
        neural_config: the header's ``neural_config`` (schema-valid).

    Returns:
        ``{"layers.<i>.weight": (out_i, in_i), "layers.<i>.bias": (out_i,)}`` for i = 0..len(hidden_layers).
    """
    sizes = [int(neural_config["input_size"]), *map(int, neural_config["hidden_layers"]),
             int(neural_config["output_size"])]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(len(sizes) - 1):
        shapes[f"layers.{i}.weight"] = (sizes[i + 1], sizes[i])
        shapes[f"layers.{i}.bias"] = (sizes[i + 1],)
    return shapes


def check_weights(document: YamlDocument, section: RawSection | None,
                  tensors: Mapping[str, np.ndarray] | None, *, valid: Validity = _all_valid) -> list[Diagnostic]:
    """Check that ``neural_weights`` exists and holds exactly the tensors `neural_config` asks for.

    Args:
        document: the parsed header.
        section: the ``neural_weights`` section, or None when the file has none.
        tensors: its decoded tensors (None when absent or when it did not decode: AF21xx says why).
        valid: tells whether a header node satisfies the schema (`SchemaReport.is_valid`); the
            default takes every node as valid, for a header known to pass the schema.

    Returns:
        AF2001 section missing (when the header has a `neural_config`), and when ``input_size``,
        ``hidden_layers`` and ``output_size`` are valid: AF2002 tensor missing, AF2003 unexpected
        tensor, AF2004 wrong shape.
    """
    if not isinstance(document.data, dict) or "neural_config" not in document.data:
        return []  # the schema reports the missing `neural_config` (AF1001); weights mean nothing without it
    config_span = document.span_of(("neural_config",), part="key")
    if section is None:
        return [Diagnostic("AF2001", "error", "the file has no `neural_weights` section", span=config_span,
                           label="this network needs weights",
                           help="pack weights with `af pack FILE --weights W.safetensors`, or start from `af init`")]
    config = _sound_config(document, _NETWORK_KEYS, valid)
    if tensors is None or config is None:
        return []
    return _compare_tensors("neural_weights", section, tensors, expected_weight_shapes(config), config_span,
                            codes=("AF2002", "AF2003", "AF2004"))


def _sound_config(document: YamlDocument, keys: tuple[str, ...], valid: Validity) -> Mapping[str, Any] | None:
    """Return `neural_config` when each of ``keys`` is present and schema-valid, else None."""
    config = document.data.get("neural_config") if isinstance(document.data, dict) else None
    if not isinstance(config, dict):
        return None
    if any(key not in config or not valid(("neural_config", key)) for key in keys):
        return None
    return config


def check_training_data(document: YamlDocument, section: RawSection | None,
                        tensors: Mapping[str, np.ndarray] | None, *, valid: Validity = _all_valid) -> list[Diagnostic]:
    """Check the optional ``training_data`` section: ``inputs`` [N, input_size], ``targets`` [N, output_size].

    Args:
        document: the parsed header.
        section: the ``training_data`` section, or None.
        tensors: its decoded tensors (None when absent or when it did not decode).
        valid: tells whether a header node satisfies the schema (see `check_weights`).

    Returns:
        When ``input_size`` and ``output_size`` are valid: AF2005 tensor missing, AF2006 wrong shape
        or row counts that differ, AF2007 unexpected tensor.
    """
    config = _sound_config(document, _DATA_KEYS, valid)
    if section is None or tensors is None or config is None:
        return []
    config_span = document.span_of(("neural_config",), part="key")
    inputs = tensors.get("inputs")
    rows = int(inputs.shape[0]) if inputs is not None and inputs.ndim == 2 else "N"
    expected = {"inputs": (rows, int(config["input_size"])), "targets": (rows, int(config["output_size"]))}
    return _compare_tensors("training_data", section, tensors, expected, config_span,
                            codes=("AF2005", "AF2007", "AF2006"))


def _compare_tensors(section_name: str, section: RawSection, tensors: Mapping[str, np.ndarray],
                     expected: Mapping[str, tuple], config_span: Span, *, codes: tuple[str, str, str]) -> list[Diagnostic]:
    missing_code, extra_code, shape_code = codes
    marker = section.span
    section_span = Span(marker.path, marker.line, 1, marker.line, len(f"---BINARY_SECTION:{section_name}---") + 1)
    note = (f"`neural_config` (line {config_span.line}) defines the network",)
    out = []
    for name, shape in expected.items():
        if name not in tensors:
            out.append(Diagnostic(missing_code, "error", f"`{section_name}` has no tensor `{name}`",
                                  span=section_span, help=f"add `{name}` with shape {_shape(shape)}", notes=note))
            continue
        found = tuple(int(d) for d in tensors[name].shape)
        if len(found) != len(shape) or any(e != "N" and e != f for e, f in zip(shape, found)):
            out.append(Diagnostic(shape_code, "error",
                                  f"tensor `{name}` in `{section_name}` has shape {_shape(found)}, expected {_shape(shape)}",
                                  span=section_span, help="re-export the tensor with the expected shape, or fix "
                                  "`neural_config` to match it", notes=note))
    for name in sorted(set(tensors) - set(expected)):
        out.append(Diagnostic(extra_code, "error", f"unexpected tensor `{name}` in `{section_name}`",
                              span=section_span, help=f"`{section_name}` holds only: {', '.join(expected)}",
                              notes=note))
    return out


def check_interop_fields(document: YamlDocument, *, valid: Validity = _all_valid) -> list[Diagnostic]:
    """Check the lengths of ``input_normalization`` and ``labels`` against the network's sizes.

    Args:
        document: the parsed header.
        valid: tells whether a header node satisfies the schema (see `check_weights`).

    Returns:
        AF6080 for a ``mean`` or ``scale`` whose length is not ``input_size``; AF6081 for ``labels``
        whose count is not ``output_size`` (or 2 for one sigmoid output).
    """
    out = []
    config = _sound_config(document, ("input_size", "input_normalization"), valid)
    if config is not None:
        for key in ("mean", "scale"):
            values = config["input_normalization"][key]
            if len(values) != config["input_size"]:
                out.append(Diagnostic("AF6080", "error", f"`{key}` has {len(values)} values, not one per input "
                                      f"({config['input_size']})",
                                      span=document.span_of(("neural_config", "input_normalization", key)),
                                      help="give one value per input, in input order"))
    config = _sound_config(document, ("output_size", "labels"), valid)
    if config is not None:
        wanted = config["output_size"]
        binary = wanted == 1 and config.get("output_activation") == "sigmoid"
        if len(config["labels"]) != (2 if binary else wanted):
            what = "2 (the classes of 0 and 1 of the one sigmoid output)" if binary else f"one per output ({wanted})"
            out.append(Diagnostic("AF6081", "error", f"`labels` has {len(config['labels'])} entries, not {what}",
                                  span=document.span_of(("neural_config", "labels")),
                                  help="name the class of each output, in output order"))
    return out


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_resources(document: YamlDocument, *, valid: Validity = _all_valid) -> list[Diagnostic]:
    """Check that each requirement fits within its limit.

    Args:
        document: the parsed header.
        valid: tells whether a header node satisfies the schema (see `check_weights`); a pair is
            compared only when both its requirement and its limit are valid.

    Returns:
        AF2010 for each requirement above its limit.
    """
    limits = _mapping_at(document, ("resources", "limits"))
    requirements = _mapping_at(document, ("resources", "requirements"))
    out = []
    for key, limit_key in REQUIREMENT_LIMITS.items():
        paths = (("resources", "requirements", key), ("resources", "limits", limit_key))
        if key in requirements and limit_key in limits and all(map(valid, paths)) \
                and requirements[key] > limits[limit_key]:
            out.append(_over_limit(document, key, requirements[key], limit_key, limits[limit_key]))
    return out


def _over_limit(document: YamlDocument, key: str, required: Any, limit_key: str, limit: Any) -> Diagnostic:
    limit_span = document.span_of(("resources", "limits", limit_key))
    return Diagnostic("AF2010", "error", f"`{key}` ({required}) is more than the limit `{limit_key}` ({limit})",
                      span=document.span_of(("resources", "requirements", key)), label="required here",
                      help=f"raise `resources.limits.{limit_key}` (line {limit_span.line}) or lower the requirement")


def _mapping_at(document: YamlDocument, path: tuple[str, ...]) -> Mapping[str, Any]:
    """Return the mapping at ``path``, or an empty one when it is absent or not a mapping."""
    node: Any = document.data
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}
