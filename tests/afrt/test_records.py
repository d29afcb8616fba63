"""Input parsing and output records of `af run` (afrt.records)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import orjson
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from afrt.records import (
    ErrorRecord, InputRecord, RecordBlock, decode_results, encode_error, encode_output, encode_results, parse_block,
    parse_line, parse_lines, to_float32,
)


def parse(line: bytes | str, size: int = 3, line_no: int = 7):
    raw = line.encode() if isinstance(line, str) else line
    return parse_line(raw, seq=0, line_no=line_no, input_size=size)


class TestParseLine:
    def test_object_with_string_and_int_ids(self):
        rec = parse('{"id": "a", "input": [1, 2.5, -3]}')
        assert isinstance(rec, InputRecord) and rec.id == "a" and rec.values == [1, 2.5, -3]
        assert parse('{"id": 42, "input": [0,0,0]}').id == 42

    def test_bare_array_takes_its_line_number(self):
        rec = parse("[1, 2, 3]", line_no=12)
        assert isinstance(rec, InputRecord) and rec.id == 12

    @pytest.mark.parametrize(
        "line, code",
        [
            ('{"id": "x", "input": [1, 2', "AF5230"),
            ("not json at all", "AF5230"),
            ('{"id": 1, "input": [NaN, 1, 2]}', "AF5231"),
            ('{"id": 1, "input": [Infinity, 1, 2]}', "AF5231"),
            ('{"id": 1, "input": [1e999, 1, 2]}', "AF5231"),
            ('{"id": "\\ud800", "input": [1, 2, 3]}', "AF5230"),  # a lone surrogate: not an overflow
            ('{"id": 1, "input": [1, 2]}', "AF5232"),
            ('"text"', "AF5234"),
            ('{"id": 1}', "AF5234"),
            ('{"id": 1, "input": "1,2,3"}', "AF5234"),
            ('{"id": true, "input": [1,2,3]}', "AF5235"),
            ('{"id": [1], "input": [1,2,3]}', "AF5235"),
        ],
    )
    def test_bad_lines_become_error_records(self, line, code):
        rec = parse(line)
        assert isinstance(rec, ErrorRecord)
        assert rec.code == code
        assert rec.message.startswith("line 7") or "line 7" in rec.message

    def test_malformed_line_is_quoted_and_identified_by_line_number(self):
        rec = parse('{"id": "x", "input": [1, 2', line_no=4)
        assert rec.id == 4
        assert '{"id": "x", "input": [1, 2' in rec.message

    def test_wrong_length_keeps_the_record_id(self):
        rec = parse('{"id": "short", "input": [1]}')
        assert rec.id == "short" and "1 values" in rec.message and "takes 3" in rec.message

    def test_parse_lines_skips_blank_lines_and_numbers_records(self):
        recs = list(parse_lines([b"[1,2,3]\n", b"\n", b"  \n", b"[4,5,6]\n"], input_size=3))
        assert [(r.seq, r.id) for r in recs] == [(0, 1), (1, 4)]


class TestToFloat32:
    def test_rows_become_one_float32_array(self):
        array = to_float32([[1, 2.5, -3], [0, 1e-3, 7]], 3)
        np.testing.assert_array_equal(array, np.array([[1, 2.5, -3], [0, 1e-3, 7]], np.float32))
        assert array.dtype == np.float32 and array.flags.c_contiguous

    @pytest.mark.parametrize("bad", ["1.5", None, [1], {"a": 1}, 1e39, -1e39, 10**40])
    def test_non_numbers_and_non_finite_float32_give_none(self, bad):
        # numpy.array would read "1.5" as 1.5 and null as NaN; array("d") refuses both.
        assert to_float32([[1, 2, 3], [1, bad, 3]], 3) is None


class TestRecordBlock:
    def test_from_records_sets_aside_bad_values_with_their_codes(self):
        recs = [parse("[1, 2, 3]"), parse('[1, "x", 3]'), parse("[1, true, 3]"), parse("[1e39, 0, 0]"),
                parse('[1, "2", 3]'), parse("[4, 5, 6]")]
        for i, rec in enumerate(recs):
            rec.seq = i
        block, bad = RecordBlock.from_records(recs, 3)
        np.testing.assert_array_equal(block.array, np.array([[1, 2, 3], [4, 5, 6]], np.float32))
        assert block.seqs == [0, 5]
        assert [(b.seq, b.code) for b in bad] == [(1, "AF5233"), (2, "AF5233"), (3, "AF5231"), (4, "AF5233")]

    def test_split_and_concat_round_trip(self):
        block = RecordBlock([0, 1, 3], ["a", "b", "c"], [1, 2, 4], np.arange(6, dtype=np.float32).reshape(3, 2))
        head, tail = block.split(2)
        assert head.ids == ["a", "b"] and tail.seqs == [3]
        again = RecordBlock.concat([head, tail])
        assert again.seqs == block.seqs and again.lines == block.lines
        np.testing.assert_array_equal(again.array, block.array)
        rec = block.record(2)
        assert (rec.seq, rec.id, rec.line, list(rec.values)) == (3, "c", 4, [4.0, 5.0])


class TestResultsPayload:
    def test_round_trip(self):
        outputs = np.array([[0.1, 1 / 3], [-2, 5e-8]], np.float32)
        pairs = decode_results(encode_results(["a", 7], outputs))
        assert [p[0] for p in pairs] == ["a", 7]
        assert np.stack([p[1] for p in pairs]).tobytes() == outputs.tobytes()

    @pytest.mark.parametrize("payload", [b"", b"[1]", b'{"a":1}\n', b"[1,2]\n" + b"\0" * 12, b"[]\n\0\0\0\0"])
    def test_refuses_what_is_not_a_payload(self, payload):
        with pytest.raises(ValueError):
            decode_results(payload)


class TestEncode:
    def test_output_record(self):
        line = encode_output("a", np.array([0.1, 1 / 3], np.float32), "agent-1")
        assert line.endswith(b"\n")
        data = json.loads(line)
        assert data["id"] == "a" and data["agent"] == "agent-1"
        # float32 values are written in their shortest exact form: they read back bit-identical.
        assert np.array(data["output"], np.float32).tobytes() == np.array([0.1, 1 / 3], np.float32).tobytes()

    def test_error_record(self):
        data = orjson.loads(encode_error(3, "AF5232", "bad"))
        assert data == {"id": 3, "error": {"code": "AF5232", "message": "bad"}}


def _outcomes(lines, *, size=3, suspect=True):
    """parse_block's records as comparable tuples, in seq order."""
    block, errors, next_seq = parse_block(lines, seq=5, line_no=3, input_size=size, suspect=suspect)
    got = [("InputRecord", rec.seq, rec.id, rec.line, tuple(float(v) for v in rec.values))
           for rec in (block.record(i) for i in range(len(block)))] if block else []
    got += [("ErrorRecord", e.seq, e.id, e.code) for e in errors]
    return sorted(got, key=lambda t: t[1]), next_seq


def _expected(lines, *, size=3):
    """The same records from parse_line plus the exact element check, line by line."""
    from afrt.records import check_numbers

    want = []
    for rec in parse_lines(lines, input_size=size, start_seq=5, start_line=3):
        if type(rec) is InputRecord:
            problem = check_numbers(rec)
            rec = problem or rec
        if type(rec) is InputRecord:
            want.append(("InputRecord", rec.seq, rec.id, rec.line, tuple(float(np.float32(v)) for v in rec.values)))
        else:
            want.append(("ErrorRecord", rec.seq, rec.id, rec.code))
    return want


class TestParseBlock:
    LINES = [
        b'{"id": "a", "input": [1, 2, 3]}', b"", b"   ", b"[4, 5, 6]", b'{"id": 1, "input": [1, 2', b'{"id": 2, "input": [NaN, 1, 2]}',
        b'{"id": 3, "input": [1, 2]}', b'"text"', b'{"id": true, "input": [1, 2, 3]}', b'{"input": [7, 8, 9]}',
        b'{"id": 9, "input": [1, "x", 3]}', b'{"id": 10, "input": [1, 2, 3]}\r',
        b'{"id": "str", "input": [1, "2", 3]}', b'{"id": "bool", "input": [1, true, 3]}', b"[false, 0, 0]",
        b'{"id": "null", "input": [1, null, 3]}', b'{"id": "rare", "input": [1, 2, 3]}',
    ]

    def test_same_as_parse_line_and_the_exact_check_on_each_line(self):
        got, next_seq = _outcomes(self.LINES)
        want = _expected(self.LINES)
        assert got == want and next_seq == 5 + len(want)

    def test_numbers_as_strings_and_booleans_are_not_numbers(self):
        # Regression: these used to pass as 2.0 and 1.0 when no other record of the batch was bad.
        got, _ = _outcomes([b'{"id": "s", "input": [1, "2", 3]}', b'{"id": "b", "input": [1, true, 3]}'])
        assert [(g[2], g[3]) for g in got] == [("s", "AF5233"), ("b", "AF5233")]

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-9, 9), st.booleans()),
                             min_size=3, max_size=3), min_size=1, max_size=6),
           st.lists(st.text(alphabet="rab\\\"xyz", max_size=4), min_size=6, max_size=6))
    def test_booleans_are_found_whatever_the_ids(self, rows, ids):
        # Ids full of r, a, quotes and backslashes: the letters the boolean check counts.
        lines = [orjson.dumps({"id": rid, "input": row}) for rid, row in zip(ids, rows)]
        got, _ = _outcomes(lines)
        assert got == _expected(lines)

    def test_a_record_too_deep_to_re_encode_gets_the_exact_check(self):
        # orjson reads 1,024 levels but writes 254: the boolean check must not fail on such a record.
        deep: object = "rare"
        for _ in range(300):
            deep = [deep]
        lines = [json.dumps({"id": "d", "extra": deep, "input": [1, 2, 3]}).encode(),
                 json.dumps({"id": "b", "extra": deep, "input": [1, True, 3]}).encode()]
        got, _ = _outcomes(lines)
        assert [(g[0], g[2]) for g in got] == [("InputRecord", "d"), ("ErrorRecord", "b")]

    def test_not_suspect_skips_the_boolean_check_only(self):
        got, _ = _outcomes([b"[1, 2, 3]", b'[1, "2", 3]'], suspect=False)
        assert [g[0] for g in got] == ["InputRecord", "ErrorRecord"]


class TestStreamParser:
    def test_over_long_line_is_one_error_and_the_next_lines_parse(self):
        from afrt.stream import _Parser

        parser = _Parser(3)
        parser.max_line = 50
        chunks = [b"[1,2,3]\n[" + b"1," * 40, b"1," * 40, b"1]\n[4,5,6]\n", b""]
        records = sorted([r for c in chunks for r in _records(parser.feed(c))], key=lambda r: r.seq)
        assert [(type(r).__name__, r.id) for r in records] == [
            ("InputRecord", 1), ("ErrorRecord", 2), ("InputRecord", 3)]
        assert records[1].code == "AF5237" and [r.seq for r in records] == [0, 1, 2]

    def test_any_chunking_gives_the_records_of_parse_lines(self):
        # Lines reach parse_batch as views into the chunk; every split point must give the same records.
        from afrt.stream import _Parser

        text = (b'{"id": "a", "input": [1, 2, 3]}\r\n\n   \n[4, 5, 6]\n{"id": 7, "input": [1, 2]}\n'
                b'not json\n{"id": true, "input": [1, 2, 3]}\n[1, 2, NaN]\n{"id": "z", "input": [7, 8, 9]}')
        want = list(parse_lines(text.split(b"\n"), input_size=3))
        for size, hold in itertools.product((1, 2, 7, 16, 33, len(text)), (False, True)):
            parser = _Parser(3, block_rows=2)
            chunks = [text[i : i + size] for i in range(0, len(text), size)] + [b""]
            got = sorted([r for c in chunks for r in _records(parser.feed(c, hold=hold))], key=lambda r: r.seq)
            assert [(type(r).__name__, r.seq, r.id, getattr(r, "code", None)) for r in got] == [
                (type(r).__name__, r.seq, r.id, getattr(r, "code", None)) for r in want], size
            assert [list(r.values) for r in got if type(r) is InputRecord] == [
                [float(v) for v in r.values] for r in want if type(r) is InputRecord]


def _records(parsed):
    blocks, errors = parsed
    return [b.record(i) for b in blocks for i in range(len(b))] + list(errors)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


class TestParserNeverRaises:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(
        st.binary(max_size=40),
        _JSON.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.none()),
                  st.lists(_JSON, min_size=3, max_size=3)).map(lambda t: json.dumps({"id": t[0], "input": t[1]}).encode()),
    ), max_size=8), st.integers(1, 64))
    def test_every_non_blank_line_gives_exactly_one_record(self, lines, chunk):
        # Whatever the bytes: no exception, and each non-blank line yields one record, in order.
        from afrt.stream import _Parser

        text = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
        parser = _Parser(3, block_rows=2)
        got = [r for i in range(0, len(text), chunk) for r in _records(parser.feed(text[i : i + chunk]))]
        got += _records(parser.feed(b""))
        blank = sum(1 for line in text.split(b"\n")[:-1] if not line.strip())
        assert sorted(r.seq for r in got) == list(range(len(text.split(b"\n")) - 1 - blank))
