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
from array import array
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import orjson

__all__ = [
    "ErrorRecord",
    "InputRecord",
    "RecordBlock",
    "check_numbers",
    "decode_results",
    "encode_error",
    "encode_output",
    "encode_results",
    "may_spell_booleans",
    "parse_block",
    "parse_line",
    "parse_lines",
    "to_float32",
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
            json.loads(line, parse_constant=_raise_constant, parse_float=_finite_float)
        except _Overflow:
            return None, ("AF5231", f"a number overflows to infinity in `{_quote(line)}`")
        except _NonFinite as nf:
            return None, ("AF5231", f"non-finite value `{nf}` in `{_quote(line)}`")
        except (ValueError, UnicodeDecodeError):
            pass
        # Garbage, or what only the stdlib takes (a lone surrogate such as "\ud800"): orjson says why.
        return None, ("AF5230", f"malformed JSON ({exc.msg}) in `{_quote(line)}`")


class _NonFinite(ValueError):
    pass


class _Overflow(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Overflow(text)
    return value


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

    The exact check, element by element: only run for the records the fast conversion
    (`to_float32`) could not vouch for.
    """
    for i, v in enumerate(record.values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return ErrorRecord(
                record.seq, record.id, "AF5233", f"line {record.line}: input[{i}] is {_kind(v)}, not a number"
            )
        if not math.isfinite(v) or abs(v) > 3.4028234663852886e38:
            return ErrorRecord(record.seq, record.id, "AF5231", f"line {record.line}: input[{i}] = {v} is not a finite float32")
    return None


def to_float32(rows: Sequence[Sequence[Any]], input_size: int) -> np.ndarray | None:
    """Convert equal-length rows of numbers to one float32 array [len(rows), input_size].

    ``array("d")`` refuses strings, null, arrays and objects, which ``numpy.array`` would turn
    into numbers or NaN, and is as fast. It takes booleans as numbers: `parse_block` finds those.

    Returns:
        The array, or None when a value is not a number or not a finite float32.
    """
    try:
        buffer = b"".join([array("d", row) for row in rows])
    except (TypeError, OverflowError, ValueError):
        return None
    with np.errstate(over="ignore"):
        out = np.frombuffer(buffer, np.float64).astype(np.float32).reshape(len(rows), input_size)
    return out if np.isfinite(out).all() else None


@dataclass(slots=True)
class RecordBlock:
    """Consecutive good input records, their vectors stacked in one float32 array.

    What the work queue carries and a replica runs: one array for the backend call and no object
    per record on the hot path. ``seqs`` increase but may have gaps (the records between failed).
    """

    seqs: list[int]
    ids: list[Union[str, int]]
    lines: list[int]
    array: np.ndarray

    def __len__(self) -> int:
        return len(self.seqs)

    def record(self, i: int) -> InputRecord:
        """Return record ``i`` as an `InputRecord` (its values are a float32 row)."""
        return InputRecord(self.seqs[i], self.ids[i], self.array[i], self.lines[i])

    def split(self, n: int) -> tuple[RecordBlock, RecordBlock]:
        """Return the first ``n`` records and the rest (views: nothing is copied)."""
        head = RecordBlock(self.seqs[:n], self.ids[:n], self.lines[:n], self.array[:n])
        return head, RecordBlock(self.seqs[n:], self.ids[n:], self.lines[n:], self.array[n:])

    @classmethod
    def concat(cls, blocks: Sequence[RecordBlock]) -> RecordBlock:
        """Return one block holding the records of ``blocks`` in order."""
        if len(blocks) == 1:
            return blocks[0]
        seqs, ids, lines = [], [], []
        for block in blocks:
            seqs += block.seqs
            ids += block.ids
            lines += block.lines
        return cls(seqs, ids, lines, np.concatenate([b.array for b in blocks]))

    @classmethod
    def from_records(cls, records: Sequence[InputRecord], input_size: int) -> tuple[RecordBlock, list[ErrorRecord]]:
        """Stack ``records`` (of the right length) into a block, setting aside those with bad values.

        Returns:
            (the block of good records, in order; an error record for each bad one).
        """
        records = list(records)
        if records and not any([_has_bool(r.values) for r in records]):
            array_ = to_float32([r.values for r in records], input_size)
            if array_ is not None:
                return cls._of(records, array_), []
        good, bad = _check_each(records)
        array_ = to_float32([r.values for r in good], input_size) if good else np.zeros((0, input_size), np.float32)
        return cls._of(good, array_), bad

    @classmethod
    def _of(cls, records: Sequence[InputRecord], array_: np.ndarray) -> RecordBlock:
        return cls([r.seq for r in records], [r.id for r in records], [r.line for r in records], array_)


def _check_each(records: Sequence[InputRecord]) -> tuple[list[InputRecord], list[ErrorRecord]]:
    """Split ``records`` by `check_numbers`: (those whose values are finite float32 numbers, the errors)."""
    good: list[InputRecord] = []
    bad: list[ErrorRecord] = []
    for record in records:
        problem = check_numbers(record)
        (bad if problem else good).append(problem or record)
    return good, bad


def may_spell_booleans(data: bytes) -> bool:
    """Return whether ``data`` holds an ``r`` or an ``a`` (memchr), the letters of ``true`` and
    ``false`` that JSON numbers and the keys ``id``/``input`` never contain.

    Without them, `parse_block` may skip its boolean check (``suspect=False``).
    """
    return any(data.find(letter) >= 0 for letter in _BOOLEAN_LETTERS)


#: a letter of ``true`` and one of ``false``, found in no JSON number and in neither ``id`` nor ``input``
_BOOLEAN_LETTERS = (b"r", b"a")


def _has_bool(values: Any) -> bool:
    return not isinstance(values, np.ndarray) and any([type(v) is bool for v in values])


def _may_hold_booleans(raw: bytes, data: Any) -> bool:
    """Return False when the input array of a parsed line surely holds no `true`/`false`.

    `to_float32` takes booleans as numbers. The caller only asks for lines that `may_spell_booleans`
    says may hold them (it looks at whole chunks). Such a line is cleared when the rest of
    the record (all but ``input``, re-encoded) accounts for every one of those letters; escapes
    (a backslash) could hide letters, so those lines get the exact check.
    """
    if raw.find(b"\\") >= 0:
        return True
    try:
        rest = orjson.dumps({k: v for k, v in data.items() if k != "input"}) if type(data) is dict else b""
    except orjson.JSONEncodeError:  # e.g. nesting deeper than orjson writes (it reads deeper)
        return True
    return any(_more_than(raw, letter, rest.count(letter)) for letter in _BOOLEAN_LETTERS)


def _more_than(raw: bytes, byte: bytes, limit: int) -> bool:
    """Return whether ``raw`` holds ``byte`` more than ``limit`` times (memchr steps, not a full count)."""
    at = -1
    for _ in range(limit + 1):
        at = raw.find(byte, at + 1)
        if at < 0:
            return False
    return True


def parse_block(lines: Sequence[bytes], *, seq: int, line_no: int, input_size: int,
                suspect: bool = True) -> tuple[RecordBlock | None, list[ErrorRecord], int]:
    """Parse consecutive lines (blank ones skipped), the hot path of `af run`.

    Well-formed records take a short path into one block; anything else goes through `parse_line`
    (or `check_numbers`) for its precise error. The records are those of `parse_line` on each
    non-blank line, and their vectors are checked exactly as `check_numbers` does.

    Args:
        lines: raw lines (bytes or memoryviews), numbered from ``line_no``.
        seq: the ``seq`` of the first record.
        input_size: the length every input vector must have.
        suspect: False when the caller knows that no line holds an ``r`` or an ``a`` (so no
            boolean), which spares the per-line boolean check.

    Returns:
        (the block of good records or None, the error records, the ``seq`` of the next record).
    """
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    seqs: list[int] = []
    ids: list[Any] = []
    numbers: list[int] = []
    rows: list[list] = []
    errors: list[ErrorRecord] = []
    doubtful: list[int] = []  # rows that may hold booleans
    for line in lines:
        try:
            data = loads(line)
        except decode_error:
            data = None
            line = bytes(line)  # a memoryview from the stream parser: the slow path wants bytes
            if not line or line.isspace():  # blank lines hold no record (orjson refuses them)
                line_no += 1
                continue
        if type(data) is dict:
            values, rid = data.get("input"), data.get("id", line_no)
            ok = type(values) is list and len(values) == input_size and (type(rid) is str or type(rid) is int)
        else:
            values, rid = data, line_no
            ok = type(data) is list and len(data) == input_size
        if not ok:  # the precise error (parse_line takes every record the short path takes)
            record = parse_line(bytes(line), seq=seq, line_no=line_no, input_size=input_size)
            if type(record) is ErrorRecord:
                errors.append(record)
                seq += 1
                line_no += 1
                continue
            values, rid = record.values, record.id
        if suspect and _may_hold_booleans(bytes(line), data):
            doubtful.append(len(rows))
        seqs.append(seq)
        ids.append(rid)
        numbers.append(line_no)
        rows.append(values)
        seq += 1
        line_no += 1
    block, bad = _stack_rows(seqs, ids, numbers, rows, doubtful, input_size)
    return block, errors + bad, seq


def _stack_rows(seqs: list[int], ids: list[Any], numbers: list[int], rows: list[list], doubtful: list[int],
                input_size: int) -> tuple[RecordBlock | None, list[ErrorRecord]]:
    """Stack parsed rows into a block; a row holding a non-number becomes an error record instead.

    ``doubtful`` rows (those that may hold booleans) get the exact check first, alone.
    """
    _, bad = _check_each([InputRecord(seqs[i], ids[i], rows[i], numbers[i]) for i in doubtful])
    if bad:
        failed = {e.seq for e in bad}
        keep = [i for i, s in enumerate(seqs) if s not in failed]
        seqs, ids, numbers, rows = ([col[i] for i in keep] for col in (seqs, ids, numbers, rows))
    if not rows:
        return None, bad
    array_ = to_float32(rows, input_size)
    if array_ is None:  # some row holds a non-number: find it exactly, row by row
        good, more = _check_each([InputRecord(*f) for f in zip(seqs, ids, rows, numbers)])
        block = RecordBlock._of(good, to_float32([r.values for r in good], input_size)) if good else None
        return block, bad + more
    return RecordBlock(seqs, ids, numbers, array_), bad


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


def encode_results(ids: Sequence[Union[str, int]], outputs: np.ndarray) -> bytes:
    """Return the compact ``task.completion`` payload of a batch of results.

    The ids as one JSON array, a newline, then the outputs as float32 little-endian rows, in the
    order of ``ids``. Bandwidth limits count these bytes, so results travel in their smallest
    exact form, one message per backend batch.
    """
    if outputs.dtype != _LE_F32:
        outputs = outputs.astype(_LE_F32)
    return orjson.dumps(ids) + b"\n" + outputs.tobytes()


def decode_results(payload: bytes) -> list[tuple[Union[str, int], np.ndarray]]:
    """Return the (id, output) pairs of an `encode_results` payload, in order.

    Raises:
        ValueError: when the payload is not one.
    """
    head, sep, body = payload.partition(b"\n")
    ids = orjson.loads(head) if sep else None
    if not isinstance(ids, list) or len(body) % 4 or (ids and (len(body) // 4) % len(ids)) or (not ids and body):
        raise ValueError("not a task.completion payload")
    rows = np.frombuffer(body, dtype=_LE_F32).reshape(len(ids), -1) if ids else []
    return list(zip(ids, rows))


def encode_error(rid: Union[str, int], code: str, message: str) -> bytes:
    """Return the error line ``{"id", "error": {"code", "message"}}``."""
    return orjson.dumps({"id": rid, "error": {"code": code, "message": message}}, option=_DUMPS_OPTS)
