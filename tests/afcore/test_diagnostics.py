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


class TestFramesOfUnusualLines:
    """A frame never prints binary bytes or a megabyte line (issue 9: CR-only files, bundles, Letta JSON)."""

    def test_a_long_line_is_cut_around_the_caret(self):
        from afcore.diagnostics import MAX_FRAME_CHARS, Diagnostic, render_full
        from afcore.spans import SourceFile, Span

        text = "x" * 5000 + "BAD" + "y" * 5000
        diag = Diagnostic("AF0050", "error", "bad", span=Span("f.af", 1, 5001, 1, 5004), label="here")
        out = render_full(diag, {"f.af": SourceFile("f.af", text)})
        frame, carets = out.splitlines()[3], out.splitlines()[4]
        assert len(frame) < MAX_FRAME_CHARS + 20 and "BAD" in frame and frame.count("...") == 2
        assert frame.index("BAD") == carets.index("^^^")

    def test_control_characters_get_no_frame(self):
        from afcore.diagnostics import Diagnostic, render_full
        from afcore.spans import SourceFile, Span

        diag = Diagnostic("AF0023", "error", "not an af file", span=Span("f.af", 1, 1), help="use af run")
        out = render_full(diag, {"f.af": SourceFile("f.af", "\x28\ufffd\x2f\x00binary")})
        assert "binary" not in out and out.splitlines()[1].endswith("f.af:1:1") and "= help: use af run" in out
