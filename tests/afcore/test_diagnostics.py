import json

import pytest

from afcore.diagnostics import Diagnostic, Label, render, render_concise, render_full, sort_diagnostics
from afcore.spans import SourceFile, Span

SOURCE = SourceFile("examples/summarizer.af", "a: 1\n" * 13 + "    layers: [64, two, 32]\n")


class TestRenderFull:
    def test_matches_the_style_guide_example(self):
        diagnostic = Diagnostic(
            "AF1002",
            "error",
            "`layers[1]` must be an integer",
            span=Span("examples/summarizer.af", 14, 18, 14, 21),
            label="found string",
            help="layer sizes are positive integers",
        )
        expected = (
            "error[AF1002]: `layers[1]` must be an integer\n"
            "  --> examples/summarizer.af:14:18\n"
            "   |\n"
            "14 |     layers: [64, two, 32]\n"
            "   |                  ^^^ found string\n"
            "   |\n"
            "   = help: layer sizes are positive integers"
        )
        assert render_full(diagnostic, {SOURCE.path: SOURCE}) == expected

    def test_secondary_label_on_the_same_line(self):
        diagnostic = Diagnostic(
            "AF2001",
            "error",
            "x",
            span=Span(SOURCE.path, 14, 18, 14, 21),
            labels=(Label(Span(SOURCE.path, 14, 14, 14, 16), "first"),),
        )
        lines = render_full(diagnostic, {SOURCE.path: SOURCE}).splitlines()
        assert "   |              -- first" in lines

    def test_without_span_has_no_frame(self):
        text = render_full(Diagnostic("AF4001", "error", "bundle is truncated", help="recompile it"))
        assert text == "error[AF4001]: bundle is truncated\n = help: recompile it"

    def test_missing_source_file_still_names_the_place(self):
        text = render_full(Diagnostic("AF0001", "error", "bad", span=Span("/nonexistent/x.af", 2, 3)))
        assert "--> /nonexistent/x.af:2:3" in text


class TestOtherFormats:
    def test_concise(self):
        d = Diagnostic("AF1002", "error", "bad layer", span=Span("a.af", 4, 7))
        assert render_concise(d) == "a.af:4:7: AF1002 bad layer"

    def test_json_has_exactly_the_documented_keys(self):
        d = Diagnostic("AF1002", "warning", "bad layer", span=Span("a.af", 4, 7), help="fix it")
        (record,) = json.loads(render([d], "json"))
        assert record == {
            "code": "AF1002",
            "severity": "warning",
            "message": "bad layer",
            "path": "a.af",
            "line": 4,
            "column": 7,
            "hint": "fix it",
        }

    def test_unknown_format_is_refused(self):
        with pytest.raises(ValueError):
            render([], "xml")


def test_sort_puts_placeless_first_then_by_position():
    a = Diagnostic("A", "error", "a", span=Span("f", 3, 1))
    b = Diagnostic("B", "error", "b", span=Span("f", 1, 9))
    c = Diagnostic("C", "error", "c")
    assert [d.code for d in sort_diagnostics([a, b, c])] == ["C", "B", "A"]
