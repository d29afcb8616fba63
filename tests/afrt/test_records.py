"""Input parsing and output records of `af run` (afrt.records)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from afrt.records import (
    ErrorRecord, InputRecord, encode_error, encode_output, parse_batch, parse_line, parse_lines, stack_inputs,
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


class TestStackInputs:
    def test_stack_is_float32(self):
        recs = [parse(f"[{i}, 1, 2]") for i in range(3)]
        array, good, bad = stack_inputs(recs)
        assert array.dtype == np.float32 and array.shape == (3, 3) and not bad and good == recs

    def test_non_numbers_and_overflow_are_set_aside(self):
        recs = [parse("[1, 2, 3]"), parse('[1, "x", 3]'), parse("[1, true, 3]"), parse("[1e39, 0, 0]"), parse("[4, 5, 6]")]
        array, good, bad = stack_inputs(recs)
        np.testing.assert_array_equal(array, np.array([[1, 2, 3], [4, 5, 6]], np.float32))
        assert [b.code for b in bad] == ["AF5233", "AF5233", "AF5231"]


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


class TestParseBatch:
    LINES = [
        b'{"id": "a", "input": [1, 2, 3]}', b"", b"   ", b"[4, 5, 6]", b'{"id": 1, "input": [1, 2', b'{"id": 2, "input": [NaN, 1, 2]}',
        b'{"id": 3, "input": [1, 2]}', b'"text"', b'{"id": true, "input": [1, 2, 3]}', b'{"input": [7, 8, 9]}',
        b'{"id": 9, "input": [1, "x", 3]}', b'{"id": 10, "input": [1, 2, 3]}\r',
    ]

    def test_same_as_parse_line_on_each_line(self):
        fast, next_seq = parse_batch(self.LINES, seq=5, line_no=3, input_size=3)
        slow = list(parse_lines(self.LINES, input_size=3, start_seq=5, start_line=3))
        assert fast == slow and next_seq == 5 + len(slow)


class TestStreamParser:
    def test_over_long_line_is_one_error_and_the_next_lines_parse(self):
        from afrt.stream import _Parser

        parser = _Parser(3)
        parser.max_line = 50
        chunks = [b"[1,2,3]\n[" + b"1," * 40, b"1," * 40, b"1]\n[4,5,6]\n", b""]
        records = [r for c in chunks for r in parser.feed(c)]
        assert [(type(r).__name__, r.id) for r in records] == [
            ("InputRecord", 1), ("ErrorRecord", 2), ("InputRecord", 3)]
        assert records[1].code == "AF5237" and [r.seq for r in records] == [0, 1, 2]

    def test_any_chunking_gives_the_records_of_parse_lines(self):
        # Lines reach parse_batch as views into the chunk; every split point must give the same records.
        from afrt.stream import _Parser

        text = (b'{"id": "a", "input": [1, 2, 3]}\r\n\n   \n[4, 5, 6]\n{"id": 7, "input": [1, 2]}\n'
                b'not json\n{"id": true, "input": [1, 2, 3]}\n[1, 2, NaN]\n{"id": "z", "input": [7, 8, 9]}')
        want = list(parse_lines(text.split(b"\n"), input_size=3))
        for size in (1, 2, 7, 16, 33, len(text)):
            parser = _Parser(3)
            chunks = [text[i : i + size] for i in range(0, len(text), size)] + [b""]
            got = [r for c in chunks for r in parser.feed(c)]
            assert [(type(r).__name__, r.seq, r.id, getattr(r, "code", None)) for r in got] == [
                (type(r).__name__, r.seq, r.id, getattr(r, "code", None)) for r in want], size
            assert [list(r.values) for r in got if type(r) is InputRecord] == [
                [float(v) for v in r.values] for r in want if type(r) is InputRecord]
