"""Parse workflow step strings (the step language, `afc/grammar/steps.lark`) into `afcore.steps` trees.

A step such as ``send_output(topic="task.completion") when output.max > 0.9`` is parsed once, at
validation, by a LALR parser whose callbacks build `Step`/`Expr` objects directly (no parse tree,
nothing is ever evaluated). Syntax errors carry the exact column inside the .af file: lark's
positions inside the string are shifted by where the string's text starts in the YAML, which
`step_locator` works out from the node's quoting style.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import threading
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

from afcore.diagnostics import Diagnostic
from afcore.errors import ParseError
from afcore.steps import BINARY_OPERATORS, FIELD_ROOTS, Binary, Const, Field, Step, Unary

if TYPE_CHECKING:
    from afcore.spans import Span

    from .yamlload import YamlDocument

__all__ = ["MAX_CONSTANT_STRING", "MAX_GUARD_DEPTH", "MAX_INTEGER_LITERAL", "Locator", "parse_step", "step_locator"]

#: deepest nesting of operators a guard may have (a chain of n operators, `a + b + ...`, nests n deep);
#: the manifest encoder and the runtime walk guards recursively, so the bound keeps them far from
#: Python's recursion limit
MAX_GUARD_DEPTH = 64
#: longest string a constant part of a guard may make (`"ab" * 3` repeats the string, as in Python)
MAX_CONSTANT_STRING = 65536
#: largest magnitude of an integer literal: 2**53, the integers a JSON reader and a float64 hold exactly
MAX_INTEGER_LITERAL = 2**53

#: maps a (start, end) character range inside a step string to a span in the .af file
Locator = Callable[[int, int], "Span"]

#: how lark's terminal names read in a message
_TERMINALS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "INT": "an index", "COMPARE": "a comparison",
    "ADD_OP": "`+` or `-`", "MUL_OP": "`*`, `/` or `%`", "LPAR": "`(`", "RPAR": "`)`", "COMMA": "`,`",
    "EQUAL": "`=`", "DOT": "`.`", "LSQB": "`[`", "RSQB": "`]`", "MINUS": "`-`", "_WHEN": "`when`",
    "_AND": "`and`", "_OR": "`or`", "NOT": "`not`", "TRUE": "`true`", "FALSE": "`false`", "NULL": "`null`",
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
    text = re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m.group(1)[1:], 16)) if len(m.group(1)) == 5
                  else _ESCAPES[m.group(1)], body)
    # JSON escapes a character beyond U+FFFF as a surrogate pair (`\ud83d\ude00`): join pairs into one
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _string(token: Any) -> Const:
    text = _unescape(str(token))
    lone = _LONE_SURROGATE.search(text)
    if lone:
        raise _StepProblem("AF0078", f"the string escape `\\u{ord(lone.group()):04x}` is a lone surrogate, "
                           "not a character", token.start_pos, token.end_pos,
                           "a string holds Unicode characters only: write the character itself, or a "
                           "`\\ud83d\\ude00`-style pair for one beyond U+FFFF")
    return _leaf(Const(text), token)


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


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


# -- what the parser learns about each node while it builds the tree ------------------------------
#
# The tree's nodes (`afcore.steps`) are frozen and carry no positions, so the parse keeps a side
# table, one per parse and thread: each node's range in the step string, its operator depth and,
# for a constant subexpression, its value. Folding constants is how overflow and division by zero
# that the file alone decides are found at validation instead of on every record at run time.

#: value of a subexpression that depends on a field
_UNKNOWN = object()
_NUMBER = (int, float)  # bool is an int, as in `afcore.steps.evaluate`
_FLOAT_MAX = sys.float_info.max


@dataclass
class _Info:
    node: Any  # held so that the node's id stays its own until the parse ends
    start: int
    end: int
    depth: int
    value: Any = _UNKNOWN


_state = threading.local()


def _leaf(node: Any, first: Any, last: Any = None) -> Any:
    """Record a node without operators that spans tokens ``first`` to ``last``."""
    value = node.value if isinstance(node, Const) else _UNKNOWN
    _state.infos[id(node)] = _Info(node, first.start_pos, (last or first).end_pos, 0, value)
    return node


def _info(node: Any) -> _Info:
    return _state.infos[id(node)]


def _compound(node: Any, start: int, end: int, depth: int, value: Any) -> Any:
    if depth > MAX_GUARD_DEPTH:
        raise _StepProblem("AF0075", f"the guard nests operators more than {MAX_GUARD_DEPTH} levels deep",
                           start, end, f"a chain of n operators nests n levels; split the condition so that "
                           f"it needs at most {MAX_GUARD_DEPTH} (docs/format.md, \"Step language\")")
    _state.infos[id(node)] = _Info(node, start, end, depth, value)
    return node


def _unary(op: str, keyword: Any, operand: Any) -> Any:
    inner = _info(operand)
    value = inner.value
    if value is not _UNKNOWN:
        value = (not value) if op == "not" else (-value if type(value) in (*_NUMBER, bool) else _UNKNOWN)
    return _compound(Unary(op, operand), keyword.start_pos, inner.end, inner.depth + 1, value)


def _binary(op: str, left: Any, right: Any, op_token: Any = None) -> Any:
    a, b = _info(left), _info(right)
    node = Binary(op, left, right)
    value = _fold(op, a.value, b.value, op_token, a.start, b.end)
    return _compound(node, a.start, b.end, max(a.depth, b.depth) + 1, value)


def _fold(op: str, left: Any, right: Any, op_token: Any, start: int, end: int) -> Any:
    """The value of ``left op right`` when both are known numbers, else `_UNKNOWN`.

    Raises:
        _StepProblem: AF0077 for a divisor that is always zero, AF0076 when the value is beyond float64.
    """
    if op in ("/", "%") and type(right) in (*_NUMBER, bool) and right == 0:
        where = (op_token.start_pos, op_token.end_pos) if op_token is not None else (start, end)
        raise _StepProblem("AF0077", f"division by zero: the divisor of `{op}` is always 0", *where,
                           "the step would fail on every record; divide by a value that is not 0")
    if op in ("and", "or"):
        if left is _UNKNOWN or right is _UNKNOWN:
            return _UNKNOWN
        return (left and right) if op == "and" else (left or right)
    if op == "*" and str in (type(left), type(right)):
        return _repeat(left, right, start, end)
    if not (type(left) in (*_NUMBER, bool) and type(right) in (*_NUMBER, bool)):
        return _UNKNOWN  # a field, or a string: type checks are the step checks' business
    try:
        value = BINARY_OPERATORS[op](left, right)
    except OverflowError:
        value = math.inf
    if (isinstance(value, float) and not math.isfinite(value)) or (type(value) is int and abs(value) > _FLOAT_MAX):
        raise _StepProblem("AF0076", "this constant expression overflows: its value is beyond float64", start, end,
                           "the guard would fail or compare with infinity on every record; use smaller numbers")
    return value


def _repeat(left: Any, right: Any, start: int, end: int) -> Any:
    """Fold ``"ab" * 3``: Python repeats the string, so a large count would allocate its length on every record."""
    text, count = (left, right) if isinstance(left, str) else (right, left)
    if type(count) not in (int, bool):
        return _UNKNOWN
    if len(text) * count > MAX_CONSTANT_STRING:
        raise _StepProblem("AF0079", f"this constant expression makes a string of {len(text) * count:,} characters",
                           start, end, f"a string in a guard is at most {MAX_CONSTANT_STRING:,} characters; "
                           "repeat it fewer times")
    return text * count


def _logical(keyword: str) -> Callable[..., Any]:
    def fold(*operands: Any) -> Any:
        result = operands[0]
        for operand in operands[1:]:
            result = _binary(keyword, result, operand)
        return result

    return fold


def _arithmetic(*items: Any) -> Any:
    # items alternate operand, operator token, operand, ...: fold left, so 1 - 2 - 3 is (1 - 2) - 3
    result = items[0]
    for i in range(1, len(items), 2):
        result = _binary(str(items[i]), result, items[i + 1], items[i])
    return result


def _field(root: Any, *parts: Any) -> Field:
    if root not in FIELD_ROOTS:
        raise _StepProblem("AF0072", f"unknown field `{root}`: a guard reads `input`, `output` or `memory`",
                           root.start_pos, root.end_pos, "e.g. `output.max > 0.9` or `memory.count % 100 == 0`")
    node = Field(str(root), tuple(int(p) if p.type == "INT" else str(p) for p in parts))
    return _leaf(node, root, parts[-1] if parts else None)


def _number(token: Any, sign: int = 1) -> Const:
    text = str(token)
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if value > MAX_INTEGER_LITERAL if isinstance(value, int) else not math.isfinite(value):
        kind = "a float64" if isinstance(value, float) else f"an exact integer (at most 2**53 = {MAX_INTEGER_LITERAL})"
        shown = text if len(text) <= 24 else f"{text[:10]}...{text[-6:]}"
        raise _StepProblem("AF0074", f"the number `{shown}` is out of range: it is too large for {kind}",
                           token.start_pos, token.end_pos,
                           "guards compare with finite numbers; write a smaller value, e.g. `1e300`")
    return _leaf(Const(sign * value), token)


#: grammar rule (or alias) -> builder of its `afcore.steps` node from the rule's children
_CALLBACKS: dict[str, Callable[..., Any]] = {
    "start": _start,
    "args": _args,
    "arg": lambda key, value: (key, value),
    "guard": lambda expr: expr,
    "or_expr": _logical("or"),
    "and_expr": _logical("and"),
    "not_": lambda keyword, operand: _unary("not", keyword, operand),
    "comparison": lambda left, op, right: _binary(str(op), left, right, op),
    "sum": _arithmetic,
    "product": _arithmetic,
    "neg": lambda minus, operand: _unary("neg", minus, operand),
    "field": _field,
    "number": _number,
    "negative_number": lambda token: _number(token, -1),
    "string": _string,
    "true": lambda token: _leaf(Const(True), token),
    "false": lambda token: _leaf(Const(False), token),
    "null": lambda token: _leaf(Const(None), token),
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
    _state.infos = {}
    try:
        name, args, guard = _parser().parse(text)
    except _StepProblem as problem:
        raise ParseError([_diagnostic(problem, text, locate)]) from None
    except UnexpectedInput as exc:
        raise ParseError([_syntax_diagnostic(exc, text, locate)]) from None
    finally:
        _state.infos = {}
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
