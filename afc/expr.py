"""Parse workflow step strings (the step language, `afc/grammar/steps.lark`) into `afcore.steps` trees.

A step such as ``send_output(topic="task.completion") when output.max > 0.9`` is parsed once, at
validation, by a LALR parser whose callbacks build `Step`/`Expr` objects directly (no parse tree,
nothing is ever evaluated). Syntax errors carry the exact column inside the .af file: lark's
positions inside the string are shifted by where the string's text starts in the YAML, which
`step_locator` works out from the node's quoting style.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

from afcore.diagnostics import Diagnostic
from afcore.errors import ParseError
from afcore.steps import FIELD_ROOTS, Binary, Const, Field, Step, Unary

if TYPE_CHECKING:
    from afcore.spans import Span

    from .yamlload import YamlDocument

__all__ = ["Locator", "parse_step", "step_locator"]

#: maps a (start, end) character range inside a step string to a span in the .af file
Locator = Callable[[int, int], "Span"]

#: how lark's terminal names read in a message
_TERMINALS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "INT": "an index", "COMPARE": "a comparison",
    "ADD_OP": "`+` or `-`", "MUL_OP": "`*`, `/` or `%`", "LPAR": "`(`", "RPAR": "`)`", "COMMA": "`,`",
    "EQUAL": "`=`", "DOT": "`.`", "LSQB": "`[`", "RSQB": "`]`", "MINUS": "`-`", "_WHEN": "`when`",
    "_AND": "`and`", "_OR": "`or`", "_NOT": "`not`", "TRUE": "`true`", "FALSE": "`false`", "NULL": "`null`",
    "$END": "the end of the step",
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


class _StepProblem(Exception):
    """A fault found while building the tree, with its range inside the step string."""

    def __init__(self, code: str, message: str, start: int, end: int, hint: str) -> None:
        super().__init__(message)
        self.code, self.message, self.start, self.end, self.hint = code, message, start, end, hint


def _unescape(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) == 5
                  else _ESCAPES[m.group(1)], body)


def _start(name: Any, args: dict | None, guard: Any) -> tuple:
    return str(name), args or {}, guard


def _args(*items: Any) -> dict:
    out: dict[str, Any] = {}
    for item in items:
        if item is None:  # `f()`: the optional argument list is empty
            continue
        key, value = item
        if key in out:
            raise _StepProblem("AF0073", f"argument `{key}` is given twice", key.start_pos, key.end_pos,
                               "give each argument once")
        out[str(key)] = value.value  # arguments are plain literals (afcore.steps.Step.args)
    return out


def _field(root: Any, *parts: Any) -> Field:
    if root not in FIELD_ROOTS:
        raise _StepProblem("AF0072", f"unknown field `{root}`: a guard reads `input`, `output` or `memory`",
                           root.start_pos, root.end_pos, "e.g. `output.max > 0.9` or `memory.count % 100 == 0`")
    return Field(str(root), tuple(int(p) if p.type == "INT" else str(p) for p in parts))


def _logical(keyword: str) -> Callable[..., Any]:
    def fold(*operands: Any) -> Any:
        result = operands[0]
        for operand in operands[1:]:
            result = Binary(keyword, result, operand)
        return result

    return fold


def _arithmetic(*items: Any) -> Any:
    # items alternate operand, operator token, operand, ...: fold left, so 1 - 2 - 3 is (1 - 2) - 3
    result = items[0]
    for i in range(1, len(items), 2):
        result = Binary(str(items[i]), result, items[i + 1])
    return result


def _number(token: Any) -> Const:
    text = str(token)
    return Const(float(text) if any(c in text for c in ".eE") else int(text))


#: grammar rule (or alias) -> builder of its `afcore.steps` node from the rule's children
_CALLBACKS: dict[str, Callable[..., Any]] = {
    "start": _start,
    "args": _args,
    "arg": lambda key, value: (key, value),
    "guard": lambda expr: expr,
    "or_expr": _logical("or"),
    "and_expr": _logical("and"),
    "not_": lambda operand: Unary("not", operand),
    "comparison": lambda left, op, right: Binary(str(op), left, right),
    "sum": _arithmetic,
    "product": _arithmetic,
    "neg": lambda operand: Unary("neg", operand),
    "field": _field,
    "number": _number,
    "negative_number": lambda token: Const(-_number(token).value),  # type: ignore[operator]
    "string": lambda token: Const(_unescape(str(token))),
    "true": lambda _: Const(True),
    "false": lambda _: Const(False),
    "null": lambda _: Const(None),
}


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    from lark import Lark

    grammar = resources.files("afc.grammar").joinpath("steps.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=True,
                transformer=_InlineTransformer(_CALLBACKS))


class _InlineTransformer:
    """Feeds each reduced rule's children to its callback as positional arguments."""

    def __init__(self, callbacks: dict[str, Callable[..., Any]]) -> None:
        self._callbacks = callbacks

    def __getattr__(self, name: str) -> Callable[[list], Any]:
        callback = self._callbacks.get(name)
        if callback is None:
            raise AttributeError(name)
        return lambda children: callback(*children)


def parse_step(text: str, *, locate: Locator, span: Span | None = None) -> Step:
    """Parse one step string.

    Args:
        text: the step as written, e.g. ``save_state(every=100) when memory.count > 0``.
        locate: maps a character range of ``text`` to a span in the file (see `step_locator`).
        span: where the whole step string stands (stored in ``Step.span``); defaults to ``locate`` of all of it.

    Returns:
        The parsed step.

    Raises:
        ParseError: AF0070 unexpected character or token, AF0071 the step ends too early, AF0072 unknown
            field root, AF0073 an argument given twice.
    """
    from lark.exceptions import UnexpectedInput

    where = span or locate(0, len(text))
    try:
        name, args, guard = _parser().parse(text)
    except _StepProblem as problem:
        raise ParseError([_diagnostic(problem, text, locate)]) from None
    except UnexpectedInput as exc:
        raise ParseError([_syntax_diagnostic(exc, text, locate)]) from None
    return Step(name=name, args=args, guard=guard, source=text, span=where.to_json())


def _diagnostic(problem: _StepProblem, text: str, locate: Locator) -> Diagnostic:
    return Diagnostic(problem.code, "error", problem.message, span=locate(problem.start, problem.end),
                      help=problem.hint, notes=(f"in step `{text}`",))


def _syntax_diagnostic(exc: Any, text: str, locate: Locator) -> Diagnostic:
    from lark.exceptions import UnexpectedCharacters, UnexpectedToken

    expected = sorted({_TERMINALS.get(t, f"`{t}`") for t in (getattr(exc, "expected", None) or ())})
    wanted = f"expected {', '.join(expected)}" if expected else None
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        message, end = f"unexpected character `{text[pos]}` in step", pos + 1
        code = "AF0070"
    elif isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        pos, end = exc.token.start_pos, exc.token.end_pos
        message, code = f"unexpected `{exc.token}` in step", "AF0070"
    else:
        pos = end = len(text.rstrip())
        message, code = "the step ends too early", "AF0071"
    return Diagnostic(code, "error", message, span=locate(pos, max(end, pos + 1)), label=wanted, help=_FORM_HINT,
                      notes=(f"in step `{text}`",))


_FORM_HINT = "a step reads `name`, `name(key=value, ...)`, optionally followed by `when <condition>` (docs/format.md)"


def step_locator(document: YamlDocument, path: tuple) -> Locator:
    """Return a `Locator` for the step string at ``path`` of a parsed header.

    Positions are exact when the string is written on one line: plain, single-quoted (``''`` is one
    character) or double-quoted (each escape such as ``\\"`` or ``\\u00e9`` is one character).
    Otherwise (block or multi-line scalars) every position falls back to the whole node.

    Args:
        document: the parsed header.
        path: the instance path of the step string, e.g. ``("workflows", "execution", 3)``.

    Returns:
        The locator.
    """
    pos = document.positions[path]
    value = document.data
    for part in path:
        value = value[part]
    offsets = _char_offsets(document.text_of(path), pos.style)
    source = document.source
    if offsets is None or len(offsets) != len(value) + 1:
        whole = source.span(pos.start, pos.end)
        return lambda start, end: whole
    last = len(offsets) - 1

    def locate(start: int, end: int) -> Span:
        first = pos.start + offsets[min(start, last)]
        return source.span(first, max(pos.start + offsets[min(end, last)], first))

    return locate


#: length of a YAML double-quoted escape by its letter (the others are two characters, e.g. ``\\n``)
_ESCAPE_LENGTHS = {"x": 4, "u": 6, "U": 10}


def _char_offsets(raw: str, style: str | None) -> list[int] | None:
    """Return, for each character of a one-line scalar's value (and its end), its offset in ``raw``."""
    if "\n" in raw or "\r" in raw or style not in ("", "'", '"'):
        return None
    if style == "":
        return list(range(len(raw) + 1))
    offsets, i, stop = [], 1, len(raw) - 1
    while i < stop:
        offsets.append(i)
        if style == '"' and raw[i] == "\\":
            i += _ESCAPE_LENGTHS.get(raw[i + 1 : i + 2], 2)
        else:
            i += 2 if style == "'" and raw.startswith("''", i) else 1
    offsets.append(stop)
    return offsets
