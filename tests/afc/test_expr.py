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
