"""Input and output records of `af run`: JSON Lines, parsed and written with orjson.

Input, one record per line::

    {"id": "a1", "input": [0.0, 0.5, ...]}      id: a string or an integer
    [0.0, 0.5, ...]                              a bare array: its id is its line number (1-based)

Output, one record per input record::

    {"id": "a1", "output": [0.1, ...], "agent": "classification-agent-3f2a9c0d1b7e"}
    {"id": 7, "error": {"code": "AF5232", "message": "..."}}

A line that cannot be used becomes an `ErrorRecord` (never an exception), so that a run goes on
after a bad record. Blank lines are skipped: they hold no record.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Union

import numpy as np
import orjson

__all__ = [
    "ErrorRecord",
    "InputRecord",
    "encode_error",
    "encode_output",
    "parse_line",
    "parse_batch",
    "parse_lines",
    "check_chunk",
    "decode_result",
    "encode_result",
    "stack_inputs",
]

#: how much of a bad line an error message quotes
QUOTE_CHARS = 80
#: id types accepted in input records (bool is excluded on purpose: `true` is no id)
_ID_TYPES = (str, int)


@dataclass(slots=True)
class InputRecord:
    """A well-formed input record.

    Args:
        seq: its position among the records of the input (0-based), the output order key.
        id: the record's id as given (or its line number for a bare array).
        values: the input vector as parsed (a list of numbers); checked for length and type.
        line: the 1-based line number it came from.
    """

    seq: int
    id: Union[str, int]
    values: list
    line: int


@dataclass(slots=True)
class ErrorRecord:
    """A record that failed; it is written as ``{"id", "error": {"code", "message"}}``."""

    seq: int
    id: Union[str, int]
    code: str
    message: str

    def encode(self) -> bytes:
        """Return the output line for this error (with its newline)."""
        return encode_error(self.id, self.code, self.message)


def _quote(line: bytes) -> str:
    text = line.decode("utf-8", "replace").strip()
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


def _decode(line: bytes) -> tuple[Any, tuple[str, str] | None]:
    """Decode one JSON line; on failure return the error code and message."""
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError as exc:
        # orjson refuses NaN/Infinity/1e999; tell those apart from garbage with the stdlib.
        try:
            json.loads(line, parse_constant=_raise_constant)
        except _NonFinite as nf:
            return None, ("AF5231", f"non-finite value `{nf}` in `{_quote(line)}`")
        except (ValueError, UnicodeDecodeError):
            pass
        else:
            return None, ("AF5231", f"a number overflows to infinity in `{_quote(line)}`")
        return None, ("AF5230", f"malformed JSON ({exc.msg}) in `{_quote(line)}`")


class _NonFinite(ValueError):
    pass


def _raise_constant(name: str) -> None:
    raise _NonFinite(name)


def parse_line(line: bytes, *, seq: int, line_no: int, input_size: int) -> InputRecord | ErrorRecord:
    """Parse one input line.

    Args:
        line: the raw line (its newline may be included).
        seq: the record's position in the input (output order key).
        line_no: the 1-based line number, the id of records that have none.
        input_size: the length every input vector must have.

    Returns:
        An `InputRecord`, or an `ErrorRecord` (AF5230-AF5235) saying what is wrong.
    """
    data, problem = _decode(line)
    if problem:
        return ErrorRecord(seq, line_no, problem[0], f"line {line_no}: {problem[1]}")
    if isinstance(data, list):
        return _check_values(seq, line_no, data, line_no, input_size)
    if not isinstance(data, dict):
        return ErrorRecord(seq, line_no, "AF5234", f"line {line_no}: expected an object or an array, found {_kind(data)}")
    rid = data.get("id", line_no)
    if not isinstance(rid, _ID_TYPES) or isinstance(rid, bool):
        return ErrorRecord(seq, line_no, "AF5235", f"line {line_no}: `id` must be a string or an integer, found {_kind(rid)}")
    values = data.get("input")
    if not isinstance(values, list):
        found = "nothing" if values is None else _kind(values)
        return ErrorRecord(seq, rid, "AF5234", f"line {line_no}: `input` must be an array of numbers, found {found}")
    return _check_values(seq, rid, values, line_no, input_size)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _check_values(seq: int, rid: Any, values: list, line_no: int, input_size: int) -> InputRecord | ErrorRecord:
    if len(values) != input_size:
        return ErrorRecord(
            seq, rid, "AF5232", f"line {line_no}: input has {len(values)} values, the agent takes {input_size}"
        )
    return InputRecord(seq, rid, values, line_no)


def check_numbers(record: InputRecord) -> ErrorRecord | None:
    """Return an error for a vector holding non-numbers or non-finite numbers, else None.

    Only called on the slow path, after converting a whole batch failed.
    """
    for i, v in enumerate(record.values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return ErrorRecord(
                record.seq, record.id, "AF5233", f"line {record.line}: input[{i}] is {_kind(v)}, not a number"
            )
        if not math.isfinite(v) or abs(v) > 3.4028234663852886e38:
            return ErrorRecord(record.seq, record.id, "AF5231", f"line {record.line}: input[{i}] = {v} is not a finite float32")
    return None


def stack_inputs(records: list[InputRecord]) -> tuple[np.ndarray, list[InputRecord], list[ErrorRecord]]:
    """Stack the vectors of ``records`` into one float32 array, setting aside bad ones.

    Records whose ``values`` were already checked and turned into float32 rows (see
    `check_chunk`) are stacked without another check.

    Returns:
        (array [n, input_size] float32, the records it holds in order, the rejected records).
    """
    if records and all([type(r.values) is np.ndarray for r in records]):
        # concatenate + reshape copies the rows once, without np.stack's per-row expand_dims
        rows = [r.values for r in records]
        if all([row.shape == rows[0].shape for row in rows]) and rows[0].ndim == 1:
            return np.concatenate(rows).reshape(len(rows), -1), records, []
        return np.stack(rows), records, []
    try:
        with np.errstate(over="raise"):
            array = np.array([r.values for r in records], dtype=np.float32)
        if array.ndim == 2 and np.isfinite(array).all():
            return array, records, []
    except (ValueError, TypeError, FloatingPointError, OverflowError):
        pass
    good: list[InputRecord] = []
    bad: list[ErrorRecord] = []
    for record in records:
        problem = check_numbers(record)
        (bad if problem else good).append(problem or record)
    array = np.array([r.values for r in good], dtype=np.float32) if good else np.zeros((0, 0), np.float32)
    return array, good, bad


def check_chunk(records: list[InputRecord | ErrorRecord]) -> list[InputRecord | ErrorRecord]:
    """Convert the vectors of a freshly parsed chunk to float32 rows, turning bad ones into errors.

    Converting right after parsing, while the parsed floats are still in the CPU cache, is what
    keeps this as fast as a bare ``numpy.array`` call on the same lists.

    Returns:
        The records in the same order; each good record's ``values`` is now a float32 row.
    """
    good = [r for r in records if type(r) is InputRecord]
    if not good:
        return records
    array, kept, bad = stack_inputs(good)
    for record, row in zip(kept, array):
        record.values = row
    if not bad:
        return records
    errors = {e.seq: e for e in bad}
    return [errors.get(r.seq, r) for r in records]


def parse_batch(lines: list[bytes], *, seq: int, line_no: int, input_size: int) -> tuple[list[InputRecord | ErrorRecord], int]:
    """Parse consecutive lines (blank ones skipped), the hot path of `af run`.

    Well-formed records take a short path; anything else goes through `parse_line` for its
    precise error. The result is the same as calling `parse_line` on each non-blank line.

    Returns:
        (the records, the ``seq`` of the next record).
    """
    loads, record, out, error = orjson.loads, InputRecord, [], orjson.JSONDecodeError
    append = out.append
    for line in lines:
        try:
            data = loads(line)
        except error:
            data = None
            line = bytes(line)  # a memoryview from the stream parser: the slow path wants bytes
            if not line or line.isspace():  # blank lines hold no record (orjson refuses them)
                line_no += 1
                continue
        if type(data) is dict:
            values, rid = data.get("input"), data.get("id", line_no)
            if type(values) is list and len(values) == input_size and (type(rid) is str or type(rid) is int):
                append(record(seq, rid, values, line_no))
                seq += 1
                line_no += 1
                continue
        append(parse_line(bytes(line), seq=seq, line_no=line_no, input_size=input_size))
        seq += 1
        line_no += 1
    return out, seq


def parse_lines(lines: Iterable[bytes], *, input_size: int, start_seq: int = 0, start_line: int = 1) -> Iterator[InputRecord | ErrorRecord]:
    """Parse lines into records, skipping blank lines (they hold no record).

    Args:
        lines: raw lines.
        input_size: the length every input vector must have.
        start_seq: the ``seq`` of the first record.
        start_line: the line number of the first line.
    """
    seq = start_seq
    for line_no, line in enumerate(lines, start_line):
        if not line.strip():
            continue
        yield parse_line(line, seq=seq, line_no=line_no, input_size=input_size)
        seq += 1


_LE_F32 = np.dtype("<f4")
_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def encode_output(rid: Union[str, int], output: np.ndarray, agent: str) -> bytes:
    """Return the output line ``{"id", "output", "agent"}`` (float32 values, shortest form)."""
    return orjson.dumps({"id": rid, "output": output, "agent": agent}, option=_DUMPS_OPTS)


def encode_result(rid: Union[str, int], output: np.ndarray) -> bytes:
    """Return the compact ``task.completion`` payload: the id as JSON, a newline, float32 LE bytes.

    Bandwidth limits count these bytes, so results travel in their smallest exact form.
    """
    if output.dtype != _LE_F32:
        output = output.astype(_LE_F32)
    return orjson.dumps(rid) + b"\n" + output.tobytes()


def decode_result(payload: bytes) -> tuple[Union[str, int], np.ndarray]:
    """Return (id, output) from an `encode_result` payload.

    Raises:
        ValueError: when the payload is not one.
    """
    head, sep, body = payload.partition(b"\n")
    if not sep or len(body) % 4:
        raise ValueError("not a task.completion payload")
    return orjson.loads(head), np.frombuffer(body, dtype="<f4")


def encode_error(rid: Union[str, int], code: str, message: str) -> bytes:
    """Return the error line ``{"id", "error": {"code", "message"}}``."""
    return orjson.dumps({"id": rid, "error": {"code": code, "message": message}}, option=_DUMPS_OPTS)
