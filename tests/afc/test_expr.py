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

from hypothesis import given, settings  # noqa: E402
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


class TestGuardProperties:
    @settings(max_examples=150, deadline=None)
    @given(trees)
    def test_printed_tree_parses_back(self, tree):
        assert parse(f"a when {show(tree)}").guard == tree

    @settings(max_examples=150, deadline=None)
    @given(trees)
    def test_evaluates_as_python(self, tree):
        text = show(tree)
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
