"""Input parsing and output records of `af run` (afrt.records)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afrt.jsonl import encode_error, encode_output
from afrt.records import (
    FLOAT32_LIMIT, ErrorRecord, InputRecord, LineParser, RecordBlock, check_numbers, decode_results,
    encode_results, parse_block, parse_line, parse_lines, to_float32,
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

    def test_malformed_line_is_quoted_and_has_the_null_id_and_its_line(self):
        rec = parse('{"id": "x", "input": [1, 2', line_no=4)
        assert rec.id is None and rec.line == 4
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
        # Values from Python (Swarm.feed/submit): the exact check decides, with the decoder's float32 rule.
        rows = [[1, 2, 3], [1, "x", 3], [1, True, 3], [1e39, 0, 0], [1, "2", 3], [4, 5, 6], [10**400, 0, 0],
                [3.4028235e38, 0, 0], [float("nan"), 0, 0]]
        recs = [InputRecord(i, f"r{i}", row, i + 1) for i, row in enumerate(rows)]
        block, bad = RecordBlock.from_records(recs, 3)
        np.testing.assert_array_equal(block.array, np.array([[1, 2, 3], [4, 5, 6], [3.4028235e38, 0, 0]], np.float32))
        assert block.seqs == [0, 5, 7]
        assert [(b.seq, b.code) for b in bad] == [
            (1, "AF5233"), (2, "AF5233"), (3, "AF5231"), (4, "AF5233"), (6, "AF5231"), (8, "AF5231")]
        assert "input[1] is a string" in bad[0].message and "input[1] is a boolean" in bad[1].message
        assert "input[0] = 1e+39 is not a finite float32" in bad[2].message

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


def _outcomes(lines, *, size=3):
    """parse_block's records as comparable tuples, in seq order."""
    block, errors, next_seq = parse_block(lines, seq=5, line_no=3, input_size=size)
    got = [("InputRecord", rec.seq, rec.id, rec.line, tuple(float(v) for v in rec.values))
           for rec in (block.record(i) for i in range(len(block)))] if block else []
    got += [("ErrorRecord", e.seq, e.id, e.code) for e in errors]
    return sorted(got, key=lambda t: t[1]), next_seq


def _expected(lines, *, size=3):
    """The same records from parse_line plus the exact element check, line by line."""
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

    def test_unknown_fields_are_ignored_up_to_the_nesting_limit(self):
        # Unknown fields take the plain path; 128 levels are read, deeper is AF5239 (never a RecursionError).
        def nested(depth):
            deep: object = "rare"
            for _ in range(depth - 1):
                deep = [deep]
            return deep

        lines = [json.dumps({"id": "d", "extra": nested(128), "input": [1, 2, 3]}).encode(),
                 json.dumps({"id": "b", "extra": nested(128), "input": [1, True, 3]}).encode(),
                 json.dumps({"id": "x", "extra": nested(129), "input": [1, 2, 3]}).encode()]
        got, _ = _outcomes(lines)
        assert [(g[0], g[2], g[3] if g[0] == "ErrorRecord" else None) for g in got] == [
            ("InputRecord", "d", None), ("ErrorRecord", "b", "AF5233"), ("ErrorRecord", None, "AF5239")]
        assert got == _expected(lines)


class TestStreamParser:
    def test_over_long_line_is_one_error_and_the_next_lines_parse(self):
        parser = LineParser(3)
        parser.max_line = 50
        chunks = [b"[1,2,3]\n[" + b"1," * 40, b"1," * 40, b"1]\n[4,5,6]\n", b""]
        records = sorted([r for c in chunks for r in _records(parser.feed(c))], key=lambda r: r.seq)
        assert [(type(r).__name__, r.id) for r in records] == [
            ("InputRecord", 1), ("ErrorRecord", None), ("InputRecord", 3)]
        assert records[1].code == "AF5237" and [r.seq for r in records] == [0, 1, 2]

    def test_any_chunking_gives_the_records_of_parse_lines(self):
        # Lines reach parse_batch as views into the chunk; every split point must give the same records.
        text = (b'{"id": "a", "input": [1, 2, 3]}\r\n\n   \n[4, 5, 6]\n{"id": 7, "input": [1, 2]}\n'
                b'not json\n{"id": true, "input": [1, 2, 3]}\n[1, 2, NaN]\n{"id": "z", "input": [7, 8, 9]}')
        want = list(parse_lines(text.split(b"\n"), input_size=3))
        for size, hold in itertools.product((1, 2, 7, 16, 33, len(text)), (False, True)):
            parser = LineParser(3, block_rows=2)
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
#: numbers at the edges: float32's largest value as af prints it, the limit and its neighbours, huge literals
_EDGE_NUMBERS = st.sampled_from([
    b"3.4028235e38", b"-3.4028235e38", b"3.4028235677973362e38", b"3.4028235677973366e38", b"3.4028236e38", b"1e39",
    b"1e999", b"-1e999", b"1" + b"0" * 400, b"-1" + b"0" * 400, b"1.4e-45", b"1e-46", b"NaN", b"-Infinity", b"0", b"-0",
    b"18446744073709551616", b"true", b'"0.5"', b"null",
])
#: whole lines that broke or could break the parser: deep nesting, a BOM, huge numbers, odd whitespace
_HOSTILE = st.one_of(
    st.integers(1, 3000).map(lambda k: b"[" * k),
    st.integers(1, 3000).map(lambda k: b"[" * k + b"]" * k),
    st.integers(1, 3000).map(lambda k: b'{"input":' + b"[" * k + b"]" * k + b"}"),
    st.integers(100, 300).map(lambda k: b'{"id":"d","input":[1,2,3],"x":' + b"[" * k + b"]" * k + b"}"),
    st.integers(1, 3000).map(lambda k: b'{"a":' * k + b"1" + b"}" * k),
    st.lists(_EDGE_NUMBERS, min_size=1, max_size=4).map(lambda n: b"[" + b",".join(n) + b"]"),
    st.tuples(st.one_of(_EDGE_NUMBERS, st.just(b'"x"')), st.lists(_EDGE_NUMBERS, min_size=3, max_size=3)).map(
        lambda t: b'{"id":' + t[0] + b',"input":[' + b",".join(t[1]) + b"]}"),
    st.sampled_from([b"\xef\xbb\xbf[1,2,3]", b"\xef\xbb\xbf", b"\xef\xbb", b"\x0c", b"\t \r", b"\xff\xfe", b'"\\ud800"']),
)


def _verdicts(records):
    """Records as comparable tuples: (kind, seq, id, line, code or values)."""
    out = []
    for r in sorted(records, key=lambda r: r.seq):
        if type(r) is InputRecord:
            out.append(("ok", r.seq, r.id, r.line, tuple(np.asarray(r.values, np.float32).tolist())))
        else:
            out.append(("error", r.seq, r.id, r.line, r.code))
    return out


def _plain(text: bytes, size: int = 3):
    """What the plain path says of each line of a whole input (a BOM at its start skipped)."""
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    return _verdicts(parse_lines(text.split(b"\n"), input_size=size))


def _stream(text: bytes, chunk: int, *, hold: bool = False, size: int = 3, block_rows: int = 2):
    parser = LineParser(size, block_rows=block_rows)
    got = [r for i in range(0, len(text), chunk) for r in _records(parser.feed(text[i : i + chunk], hold=hold))]
    return _verdicts(got + _records(parser.feed(b"")))


class TestParserNeverRaises:
    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(
        st.binary(max_size=40),
        _JSON.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.one_of(st.text(max_size=5), st.integers(), st.booleans(), st.none()),
                  st.lists(_JSON, min_size=3, max_size=3)).map(lambda t: json.dumps({"id": t[0], "input": t[1]}).encode()),
        _HOSTILE,
    ), max_size=8), st.integers(1, 64), st.booleans(), st.booleans())
    def test_every_non_blank_line_gives_exactly_one_record(self, lines, chunk, bom, hold):
        # Whatever the bytes and the chunking: no exception, one record per non-blank line, in order,
        # each the plain path's verdict on its line; a line without a readable id gets the id null.
        text = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n"
        got = _stream(text, chunk, hold=hold)
        body = text[3:] if text.startswith(b"\xef\xbb\xbf") else text  # a first line may start with one too
        numbers = [n for n, line in enumerate(body.split(b"\n")[:-1], 1) if line.strip(b" \t\r")]
        assert [g[1] for g in got] == list(range(len(numbers)))
        assert [g[3] for g in got] == numbers
        assert got == _plain(text)
        for kind, _, rid, _, code in got:
            if kind == "error" and code in ("AF5230", "AF5234", "AF5235", "AF5237", "AF5239"):
                assert rid is None or code == "AF5234"


FLT_MAX = float(np.finfo(np.float32).max)


def _one_block(lines, size=4):
    """Every record of ``lines`` parsed as one block: {id: (code or None, values)}."""
    block, errors, _ = parse_block([line.encode() if isinstance(line, str) else line for line in lines],
                                   seq=0, line_no=1, input_size=size)
    got = {e.id: (e.code, None) for e in errors}
    if block is not None:
        got.update({rid: (None, block.array[i].tolist()) for i, rid in enumerate(block.ids)})
    return got


class TestHostileLines:
    """Issue 9: each class of hostile line is one error record, and the run goes on."""

    @pytest.mark.parametrize("line", [
        b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"input":' + b"[" * 100_000,
        b'{"id": 1, "input": [1, 2, 3], "extra": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b', "input": [1, 2, 3]}', b'{"a":' * 50_000,
    ])
    def test_deep_nesting_is_one_error_and_the_next_line_parses(self, line):
        # Before: a RecursionError out of the stdlib fallback killed the whole run.
        text = b'{"id": "before", "input": [1, 2, 3]}\n' + line + b'\n{"id": "after", "input": [4, 5, 6]}\n'
        for chunk in (7, 4096, len(text)):
            got = _stream(text, chunk)
            assert [(g[0], g[2], g[4]) for g in got] == [
                ("ok", "before", (1.0, 2.0, 3.0)), ("error", None, "AF5239"), ("ok", "after", (4.0, 5.0, 6.0))]

    @pytest.mark.parametrize("last, code", [(28, "AF5230"), (29, "AF5239")])
    def test_nesting_is_counted_across_the_scan_slices(self, last, code):
        # 100 levels, 1.2 MB of numbers (past a 1 MiB slice), then more levels: 128 is the limit.
        line = b"[" * 100 + b"0," * 600_000 + b"[" * last
        assert parse(line).code == code

    def test_nesting_limit_is_counted_outside_strings(self):
        many = json.dumps({"id": "[" * 500 + "{" * 500, "input": [1, 2, 3]}).encode()
        assert parse(many).id == "[" * 500 + "{" * 500
        unterminated = b'{"id": "' + b"[" * 500
        assert parse(unterminated).code == "AF5230"  # malformed, not deep: the brackets are in a string

    @pytest.mark.parametrize("neighbour", [None, '[1, "x", 3, 4]', "[1, 2]", "[NaN, 0, 0, 0]", "[1e39, 0, 0, 0]"])
    def test_float32_max_as_af_prints_it_is_accepted_whatever_its_neighbours(self, neighbour):
        # Before: accepted alone, AF5231 when a bad record shared its block.
        lines = ["[3.4028235e38, 0, 0, -3.4028235e38]"] + ([neighbour] if neighbour else [])
        got = _one_block(lines)
        assert got[1] == (None, [FLT_MAX, 0.0, 0.0, -FLT_MAX])

    def test_float32_range_is_what_rounds_to_a_finite_float32(self):
        # The reference is numpy's cast of the nearest double; every path agrees with it, alone or
        # beside a bad record, and FLOAT32_LIMIT is where it changes.
        limit = FLOAT32_LIMIT
        with np.errstate(over="ignore"):
            assert np.isfinite(np.float32(np.nextafter(limit, 0))) and not np.isfinite(np.float32(limit))
        rng = np.random.default_rng(9)
        values = [FLT_MAX, limit, np.nextafter(limit, 0), np.nextafter(limit, np.inf), 3.4028236e38, 1e39, 2.0**128,
                  1.4e-45, 1e-46, 0.1] + list(rng.uniform(FLT_MAX * 0.999, limit * 1.001, 40))
        for value in values:
            for sign in (1, -1):
                x = sign * float(value)
                with np.errstate(over="ignore"):
                    want = np.float32(x)
                line = f"[{x!r}, 0, 0, 0]"
                alone, beside = _one_block([line])[1], _one_block([line, '[1, "x", 3, 4]'])[1]
                plain = parse(line, size=4)
                if np.isfinite(want):
                    assert alone == beside == (None, [float(want), 0.0, 0.0, 0.0]), x
                    assert type(plain) is InputRecord and np.float32(plain.values[0]) == want
                else:
                    assert alone == beside == ("AF5231", None), x
                    assert plain.code == "AF5231" and "input[0]" in plain.message

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.integers(-(10**45), 10**45).map(str),
        st.tuples(st.integers(-(10**20), 10**20), st.integers(-330, 330)).map(lambda t: f"{t[0]}e{t[1]}"),
        st.decimals(allow_nan=False, allow_infinity=False, places=30).map(str),
    ), min_size=4, max_size=4))
    def test_numbers_read_as_the_stdlib_reads_them_then_rounded_to_float32(self, texts):
        # Independent reference: json.loads (stdlib), then numpy's float32 cast.
        line = ("[" + ", ".join(texts) + "]").encode()
        with np.errstate(over="ignore"):
            want = [np.float32(float(json.loads(t))) for t in texts]
        rec = _stream(line + b"\n", len(line) + 1, size=4)[0]
        if all(np.isfinite(want)):
            assert rec[0] == "ok" and rec[4] == tuple(float(w) for w in want), texts
        else:
            assert rec[0] == "error" and rec[4] == "AF5231", texts

    @pytest.mark.parametrize("literal", [b"1" + b"0" * 400, b"-1" + b"0" * 400, b"1e999", b"123456789e300"])
    def test_numbers_beyond_double_are_out_of_range_and_keep_the_id(self, literal):
        # Before: AF5230 "malformed JSON" and the id lost.
        rec = parse(b'{"id": "big", "input": [0, ' + literal + b", 0]}")
        assert (rec.code, rec.id) == ("AF5231", "big")
        assert "input[1] = " in rec.message and "not a finite float32" in rec.message
        bare = parse(b"[0, 0, " + literal + b"]", line_no=12)
        assert (bare.code, bare.id) == ("AF5231", 12)

    @pytest.mark.parametrize("rid", [2**64 - 1, -(2**63), 0, 2**53 + 1])
    def test_64_bit_integer_ids_are_ids(self, rid):
        rec = parse(f'{{"id": {rid}, "input": [1, 2, 3]}}')
        assert type(rec) is InputRecord and rec.id == rid and type(rec.id) is int
        assert orjson.loads(encode_output(rec.id, np.zeros(1, np.float32), "a"))["id"] == rid

    @pytest.mark.parametrize("rid", [2**64, -(2**63) - 1, 10**400])
    def test_integer_ids_beyond_64_bits_are_called_integers(self, rid):
        # Before: "found a float" (orjson reads them as floats).
        rec = parse(f'{{"id": {rid}, "input": [1, 2, 3]}}')
        assert rec.code == "AF5235" and rec.id is None
        assert "found the integer" in rec.message and "64-bit" in rec.message and "float" not in rec.message

    @pytest.mark.parametrize("line, found", [
        ("5", "found an integer"), ("5.5", "found a float"), ('{"id": 1.5, "input": [1, 2, 3]}', "found a float"),
        ('{"id": 1, "input": 7}', "found an integer"), ("null", "found null"), ("true", "found a boolean"),
        ('[1, 2, {"a": 1}]', "input[2] is an object"), ("[1, null, 3]", "input[1] is null"),
    ])
    def test_messages_name_what_they_found(self, line, found):
        rec = parse(line)
        assert found in rec.message and " a int" not in rec.message

    def test_the_hot_path_takes_well_formed_lines_and_the_plain_path_the_rest(self, monkeypatch):
        # The fast path is the one taken (no plain-path call for a good line) and gives its results.
        import afrt.records as records

        calls = []
        plain = records.parse_line
        monkeypatch.setattr(records, "parse_line", lambda line, **kw: calls.append(bytes(line)) or plain(line, **kw))
        good = [b'{"id": "a", "input": [1, 2.5, -3]}', b"[4, 5, 6]", b'{"input": [0, 0, 1e-3]}']
        bad = [b'{"id": "b", "input": [1, true, 3]}', b"[1, 2]", b'{"id": "c", "input": [1, 2, 3], "extra": 1}']
        block, errors, _ = parse_block(good + bad, seq=0, line_no=1, input_size=3)
        assert calls == bad
        assert block.ids == [records_id for records_id in ("a", 2, 3, "c")]
        np.testing.assert_array_equal(block.array, np.array([[1, 2.5, -3], [4, 5, 6], [0, 0, 1e-3], [1, 2, 3]], np.float32))
        assert [(e.id, e.code) for e in errors] == [("b", "AF5233"), (5, "AF5232")]


class TestByteOrderMark:
    TEXT = b'\xef\xbb\xbf{"id": 1, "input": [1, 2, 3]}\n[4, 5, 6]\n'

    @pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 64])
    def test_a_bom_at_the_start_is_skipped_at_any_chunking(self, chunk):
        # Before: record 1 failed with AF5230 and its error record had id 1, as the next record.
        got = _stream(self.TEXT, chunk)
        assert [(g[0], g[2], g[3]) for g in got] == [("ok", 1, 1), ("ok", 2, 2)]

    def test_a_bom_elsewhere_is_malformed_and_its_id_null(self):
        got = _stream(b'{"id": 1, "input": [1, 2, 3]}\n\xef\xbb\xbf[4, 5, 6]\n', 4)
        assert [(g[0], g[2], g[4]) for g in got] == [("ok", 1, (1.0, 2.0, 3.0)), ("error", None, "AF5230")]

    @pytest.mark.parametrize("text", [b"\xef\xbb", b"\xef", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n", b"\xef\xbb[1,2,3]"])
    def test_a_partial_bom_or_a_bom_alone(self, text):
        for chunk in (1, len(text)):
            got = _stream(text, chunk)
            assert got == _plain(text)
            assert all(g[0] == "error" and g[2] is None for g in got)


class TestErrorIds:
    def test_an_unreadable_line_never_shares_an_id(self):
        # The new user's case: the first line unreadable, the second `"id": 1`: two records, two ids.
        got = _stream(b'{"id": 1, "input": [1, 2, 3\n{"id": 1, "input": [1, 2, 3]}\n[1, 2, 3]\n', 64)
        assert [(g[2], g[4] if g[0] == "error" else "ok") for g in got] == [(None, "AF5230"), (1, "ok"), (3, "ok")]

    def test_error_lines_carry_the_null_id_and_the_line(self):
        rec = parse("not json", line_no=4)
        data = orjson.loads(encode_error(rec.id, rec.code, rec.message, line=rec.line))
        assert data == {"id": None, "error": {"code": "AF5230", "message": rec.message, "line": 4}}
        assert "line" not in orjson.loads(encode_error("x", "AF5001", "trap"))["error"]


CORPUS = sorted((Path(__file__).resolve().parent.parent / "corpus" / "records").glob("*.jsonl"))


class TestCorpus:
    """tests/corpus/records/NAME.jsonl: hostile input for an agent taking 4 values; NAME.expected
    holds one ``{"id", "code"}`` per record (``code`` null for a good record), in input order."""

    def test_corpus_is_not_empty(self):
        assert len(CORPUS) >= 6

    @pytest.mark.parametrize("case", CORPUS, ids=[c.stem for c in CORPUS])
    def test_each_line_gets_its_expected_verdict_at_any_chunking(self, case):
        text = case.read_bytes()
        want = [orjson.loads(line) for line in case.with_suffix(".expected").read_bytes().splitlines()]
        plain = _plain(text, size=4)
        assert [{"id": g[2], "code": g[4] if g[0] == "error" else None} for g in plain] == want
        for chunk, hold in ((1 << 17, True), (4096, False), (977, True), (len(text), False)):
            assert _stream(text, chunk, hold=hold, size=4, block_rows=64) == plain, chunk


class TestEndToEnd:
    def test_af_run_goes_on_after_a_bom_and_a_line_nested_100000_deep(self, example_bundles, tmp_path):
        # Before: the BOM failed record 1, and the deep line killed the run with a RecursionError.
        from click.testing import CliRunner

        from af.cli import app

        src = tmp_path / "in.jsonl"
        src.write_bytes(b"\xef\xbb\xbf[0, 1]\n" + b"[" * 100_000 + b'\n{"id": "z", "input": [1, 1]}\n')
        result = CliRunner().invoke(app, ["run", str(example_bundles["xor"]), "--input", str(src)])
        assert result.exit_code == 0 and "Traceback" not in result.output
        records = [orjson.loads(line) for line in result.stdout_bytes.splitlines()]
        assert [(r["id"], r.get("error", {}).get("code")) for r in records] == [(1, None), (None, "AF5239"), ("z", None)]
        assert records[1]["error"]["line"] == 2
