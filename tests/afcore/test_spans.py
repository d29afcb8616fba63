from afcore.spans import SourceFile, Span


class TestSourceFile:
    def test_positions_are_one_based(self):
        source = SourceFile("a.af", "ab\ncd\n")
        assert source.position(0) == (1, 1)
        assert source.position(3) == (2, 1)
        assert source.position(4) == (2, 2)

    def test_line_text_strips_crlf(self):
        source = SourceFile("a.af", "one\r\ntwo\r\n")
        assert source.line_text(1) == "one"
        assert source.line_text(2) == "two"
        assert source.line_text(9) == ""

    def test_span_between_offsets(self):
        source = SourceFile("a.af", "key: value\n")
        assert source.span(5, 10) == Span("a.af", 1, 6, 1, 11)


class TestSpan:
    def test_json_round_trip(self):
        span = Span("x.af", 3, 4, 3, 9)
        assert Span.from_json(span.to_json()) == span
