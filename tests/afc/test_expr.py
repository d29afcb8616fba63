"""afc.expr: the step language parsed into afcore.steps trees, with exact error columns in the file."""

from __future__ import annotations

import pytest

from afc.check import parse_workflows
from afc.expr import parse_step
from afc.yamlload import load_yaml
from afcore.errors import ParseError
from afcore.spans import SourceFile, Span
from afcore.steps import Binary, Const, Field, Step, Unary, evaluate

SOURCE = SourceFile("s.af", "x" * 400)


def parse(text: str) -> Step:
    return parse_step(text, locate=lambda start, end: SOURCE.span(start, end))


def error(text: str):
    with pytest.raises(ParseError) as info:
        parse(text)
    (diag,) = info.value.diagnostics
    return diag


class TestTrees:
    def test_bare_name(self):
        step = parse("receive_input")
        assert (step.name, dict(step.args), step.guard) == ("receive_input", {}, None)

    def test_arguments_are_plain_literals(self):
        step = parse("f(a=1, b=-2.5, c=\"x\\\"y\", d='q', e=true, f=false, g=null, h=1e3,)")
        assert dict(step.args) == {"a": 1, "b": -2.5, "c": 'x"y', "d": "q", "e": True, "f": False, "g": None,
                                   "h": 1000.0}

    def test_guard_tree(self):
        step = parse("send_output(topic=\"task.completion\") when output.max > 0.9")
        assert step.guard == Binary(">", Field("output", ("max",)), Const(0.9))

    def test_precedence(self):
        step = parse("a when not memory.count % 100 == 0 and input.x[2] < -1 or output.y")
        count = Binary("==", Binary("%", Field("memory", ("count",)), Const(100)), Const(0))
        left = Binary("and", Unary("not", count), Binary("<", Field("input", ("x", 2)), Unary("neg", Const(1))))
        assert step.guard == Binary("or", left, Field("output", ("y",)))

    def test_keywords_are_whole_words(self):
        assert parse("a when memory.nothing or memory.order").guard == Binary(
            "or", Field("memory", ("nothing",)), Field("memory", ("order",)))

    def test_json_form_round_trips(self):
        step = parse("save_state(every=100) when (memory.count + 1) * 2 >= 10 and not memory.stop")
        assert Step.from_json(step.to_json()) == step

    @pytest.mark.parametrize(
        ("guard", "reference"),
        [("output.max > 0.9", lambda o, m: o["max"] > 0.9),
         ("memory.count % 100 == 0", lambda o, m: m["count"] % 100 == 0),
         ("1 + 2 * 3 - output.max / 4 < 7", lambda o, m: 1 + 2 * 3 - o["max"] / 4 < 7),
         ("not (output.max < 0.5 or memory.count != 300)", lambda o, m: not (o["max"] < 0.5 or m["count"] != 300)),
         ("-output.max * -2 >= 1.5", lambda o, m: -o["max"] * -2 >= 1.5),
         ("memory.count - 1 - 1 == 298", lambda o, m: m["count"] - 1 - 1 == 298)],
    )
    def test_evaluates_as_python_does(self, guard, reference):
        step = parse(f"a when {guard}")
        for out, mem in [({"max": 0.95}, {"count": 300}), ({"max": 0.2}, {"count": 7})]:
            roots = {"output": out, "memory": mem}

            def resolve(root, path, roots=roots):
                value = roots[root]
                for part in path:
                    value = value[part]
                return value

            assert evaluate(step.guard, resolve) == reference(out, mem)


class TestErrors:
    def test_unexpected_token_column(self):
        diag = error("a b")
        assert diag.code == "AF0070" and (diag.span.column, diag.span.end_column) == (3, 4)
        assert "`when`" in diag.label

    def test_unexpected_character(self):
        diag = error("a when output.x $ 1")
        assert diag.code == "AF0070" and diag.span.column == 17 and "`$`" in diag.message

    def test_ends_too_early(self):
        diag = error("a when output.max >")
        assert diag.code == "AF0071" and diag.span.column == 20

    def test_unclosed_arguments(self):
        assert error("a(x=1").code == "AF0071"

    def test_chained_comparison_is_refused(self):
        assert error("a when 1 < output.x < 3").code == "AF0070"

    def test_unknown_field_root(self):
        diag = error("a when outptu.max > 1")
        assert diag.code == "AF0072" and (diag.span.column, diag.span.end_column) == (8, 14)

    def test_duplicate_argument(self):
        diag = error("a(x=1, x=2)")
        assert diag.code == "AF0073" and diag.span.column == 8

    def test_argument_values_are_literals_only(self):
        assert error("a(x=output.max)").code == "AF0070"

    def test_no_code_runs(self):
        assert error("a when __import__('os').system('x')").code in ("AF0070", "AF0072")


class TestWhatTheFileAloneDecides:
    """Faults a guard has on every record are refused at validation (issue 9, points 5, 6 and 8)."""

    @pytest.mark.parametrize("number", ["1e999", "1.5e400", "9" * 400, "9007199254740993", ".5e99999"])
    def test_number_out_of_range(self, number):
        diag = error(f"a when output.max > {number}")
        assert diag.code == "AF0074" and diag.span.column == 21 and "out of range" in diag.message
        assert diag.help

    @pytest.mark.parametrize("step", ["save_state(every=1e999)", "update_memory(window=-1e999)",
                                      f"update_memory(window={2**53 + 1})"])
    def test_argument_out_of_range(self, step):
        assert error(step).code == "AF0074"

    def test_largest_exact_integer_and_float_are_accepted(self):
        step = parse(f"save_state(every={2**53}) when output.max < 1.7976931348623157e308")
        assert step.args["every"] == 2**53 and step.guard.right == Const(1.7976931348623157e308)

    @pytest.mark.parametrize("guard", ["output.max > 1.5 * 1e300 * 1e300", "output.max > -(1e308 + 1e308)",
                                       "output.max > (1e200 * 1e200) / 2", "output.max > 9007199254740992 * 1e300",
                                       "output.max + 1e308 * 10 > 1"])
    def test_constant_overflow(self, guard):
        diag = error(f"a when {guard}")
        assert diag.code == "AF0076" and "overflows" in diag.message and diag.help

    def test_overflow_points_at_the_constant_part(self):
        diag = error("a when output.max > 2 * 1e308 * 10")
        assert (diag.span.column, diag.span.end_column) == (21, 30)  # `2 * 1e308`, the first to overflow

    @pytest.mark.parametrize("guard", ["output.max / 0 > 1", "memory.count % (2 - 2) == 0", "1 / 0.0 > output.max",
                                       "output.max / -0 > 1"])
    def test_division_by_constant_zero(self, guard):
        diag = error(f"a when {guard}")
        assert diag.code == "AF0077" and "always 0" in diag.message

    def test_constants_that_stay_finite_are_kept_as_written(self):
        step = parse("a when output.max * 1e300 > 1e300 * 1e8 - 3 / 4")
        assert step.guard.left == Binary("*", Field("output", ("max",)), Const(1e300))

    @pytest.mark.parametrize("guard", ["output.max > " + "+".join(["1"] * 500),
                                       "output.max > " + "-" * 500 + "1",
                                       "not " * 70 + "output.max",
                                       " and ".join(["output.max > 0"] * 66)])
    def test_nesting_deeper_than_the_limit(self, guard):
        diag = error(f"a when {guard}")
        assert diag.code == "AF0075" and "64 levels" in diag.message and diag.help

    def test_nesting_at_the_limit_is_accepted_and_encodes(self):
        import json

        step = parse("a when output.max > " + "-" * 63 + "1")
        assert json.loads(json.dumps(step.to_json()))["when"]["op"] == ">"
        parse("a when " + " + ".join(["output.max"] * 64) + " > 0")  # 63 `+` and the `>`: 64 levels

    def test_parentheses_alone_do_not_nest(self):
        assert parse("a when " + "(" * 300 + "output.max" + ")" * 300 + " > 0").guard.op == ">"

    @pytest.mark.parametrize("guard", ['"ab" * 9007199254740992 == input.tag', 'input.tag == 40000 * "xy"',
                                       '("a" * 1000) * 1000 == input.tag'])
    def test_constant_string_too_long(self, guard):
        # Python repeats a string times an integer: this one would take gigabytes on every record
        diag = error(f"a when {guard}")
        assert diag.code == "AF0079" and "characters" in diag.message

    def test_short_repeated_string_is_fine(self):
        assert parse('a when input.tag == "ab" * 3').guard.right == Binary("*", Const("ab"), Const(3))

    @pytest.mark.parametrize("literal", [r'"\ud800"', r'"x\udfff"', r'"\ude00\ud83d"'])
    def test_lone_surrogate_escape(self, literal):
        diag = error(f"send_output(topic={literal})")
        assert diag.code == "AF0078" and "lone surrogate" in diag.message and diag.span.column == 19

    def test_surrogate_pair_is_one_character(self):
        step = parse(r'send_output(topic="\ud83d\ude00") when output.max > 0')
        assert step.args["topic"] == "\U0001F600"
        assert step.to_json()["args"]["topic"].encode("utf-8") == "\U0001F600".encode("utf-8")


HEADER = """\
workflows:
  execution:
    - receive_input when outptu.x > 1
    - "send_output(topic=\\"t\\") when output.x >"
    - 'save_state(every=1) when memory.x $ 2'
    - "update_memory(window=1) when\\t$"
"""


class TestColumnsInFile:
    def test_positions_are_shifted_into_the_file(self):
        document = load_yaml(SourceFile("h.af", HEADER))
        _, diags = parse_workflows(document)
        found = [(d.code, d.span.line, d.span.column) for d in diags]
        # exact in plain, single- and double-quoted strings (an escape such as \" or \t is one character)
        assert found == [("AF0072", 3, 26), ("AF0071", 4, 48), ("AF0070", 5, 42), ("AF0070", 6, 38)]

    def test_block_scalar_falls_back_to_the_whole_string(self):
        text = "workflows:\n  execution:\n    - >-\n      a when\n      output.x $\n"
        _, diags = parse_workflows(load_yaml(SourceFile("h.af", text)))
        assert [(d.code, d.span.line, d.span.column) for d in diags] == [("AF0070", 3, 7)]

    def test_single_quote_escape_counts_as_one_character(self):
        text = "workflows:\n  execution:\n    - 'a(x=''y'', z=''w'') when output.x $'\n"
        _, diags = parse_workflows(load_yaml(SourceFile("h.af", text)))
        assert [(d.code, d.span.column) for d in diags] == [("AF0070", text.splitlines()[2].index("$") + 1)]

    def test_step_span_is_the_yaml_string(self):
        document = load_yaml(SourceFile("h.af", "workflows:\n  execution:\n    - 'receive_input'\n"))
        workflows, diags = parse_workflows(document)
        assert diags == []
        assert Span.from_json(workflows["execution"][0].span) == Span("h.af", 3, 7, 3, 22)


# Property: any guard tree, printed with minimal parentheses, parses back to the same tree, and
# evaluates to what Python itself computes for the same text (the step language is a subset of
# Python's expression syntax, so Python is an independent oracle here; the product never evals).
from types import SimpleNamespace  # noqa: E402

import math  # noqa: E402
import sys  # noqa: E402

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from afcore.errors import ExecutionError  # noqa: E402

_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4,
               "+": 5, "-": 5, "*": 6, "/": 6, "%": 6, "neg": 7}
_VALUES = {"input": SimpleNamespace(x=3), "output": SimpleNamespace(max=0.75), "memory": SimpleNamespace(count=-4)}

leaves = st.one_of(
    st.integers(0, 50).map(Const),
    st.sampled_from([0.5, 2.25, 10.0]).map(Const),
    st.sampled_from([Field("input", ("x",)), Field("output", ("max",)), Field("memory", ("count",))]),
)


def _extend(children):
    binary = st.tuples(st.sampled_from(sorted(set(_PRECEDENCE) - {"not", "neg"})), children, children)
    unary = st.tuples(st.sampled_from(["not", "neg"]), children)
    return st.one_of(binary.map(lambda t: Binary(*t)), unary.map(lambda t: Unary(*t)))


trees = st.recursive(leaves, _extend, max_leaves=12)


def _level(expr) -> int:
    return _PRECEDENCE[expr.op] if isinstance(expr, (Binary, Unary)) else 8


def show(expr) -> str:
    if isinstance(expr, Const):
        return repr(expr.value)
    if isinstance(expr, Field):
        return expr.dotted()
    if isinstance(expr, Unary):
        return ("not " + wrap(expr.operand, 3)) if expr.op == "not" else "-" + wrap(expr.operand, 7)
    level = _PRECEDENCE[expr.op]
    if level == 4:  # comparisons do not chain: both sides are sums
        return f"{wrap(expr.left, 5)} {expr.op} {wrap(expr.right, 5)}"
    return f"{wrap(expr.left, level)} {expr.op} {wrap(expr.right, level + 1)}"


def wrap(expr, minimum: int) -> str:
    text = show(expr)
    return f"({text})" if _level(expr) < minimum else text


def resolve(root, path):
    return getattr(_VALUES[root], path[0])


def constant_fault(expr) -> bool:
    """Whether the file alone decides that ``expr`` fails: a constant part that overflows or divides by
    zero, or a divisor that is a constant zero (Python, the oracle, evaluates the constant parts)."""
    if isinstance(expr, (Const, Field)):
        return False
    children = [expr.operand] if isinstance(expr, Unary) else [expr.left, expr.right]
    if any(constant_fault(child) for child in children):
        return True
    if isinstance(expr, Binary) and expr.op in ("/", "%") and not has_field(expr.right):
        divisor = eval(show(expr.right), {"__builtins__": {}})
        if isinstance(divisor, (int, float)) and divisor == 0:
            return True
    if has_field(expr):
        return False
    try:
        value = eval(show(expr), {"__builtins__": {}})
    except OverflowError:
        return True
    except (TypeError, ZeroDivisionError):
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) > sys.float_info.max or not math.isfinite(value)


def has_field(expr) -> bool:
    if isinstance(expr, Field):
        return True
    if isinstance(expr, Const):
        return False
    return any(has_field(c) for c in ([expr.operand] if isinstance(expr, Unary) else [expr.left, expr.right]))


class TestGuardProperties:
    @settings(max_examples=150, deadline=None)
    @given(trees)
    def test_printed_tree_parses_back(self, tree):
        try:
            parsed = parse(f"a when {show(tree)}").guard
        except ParseError as error:
            # refused only for a fault the file alone decides (overflow, a zero divisor)
            assert {d.code for d in error.diagnostics} <= {"AF0076", "AF0077"}
            assert constant_fault(tree)
        else:
            assert parsed == tree
            assert not constant_fault(tree)

    @settings(max_examples=150, deadline=None)
    @given(trees)
    def test_evaluates_as_python(self, tree):
        text = show(tree)
        assume(not constant_fault(tree))
        try:
            expected = eval(text, {"__builtins__": {}}, dict(_VALUES))  # the oracle, in the test only
        except (ZeroDivisionError, TypeError, OverflowError):
            expected = "raises"
        try:
            actual = evaluate(parse(f"a when {text}").guard, resolve)
        except ExecutionError:
            actual = "raises"
        if isinstance(expected, float) and expected != expected:
            assert isinstance(actual, float) and actual != actual or actual == "raises"
        else:
            assert actual == expected
