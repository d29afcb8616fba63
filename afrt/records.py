"""Input and output records of `af run`: JSON Lines in, JSON Lines out.

Input, one record per line (docs/runtime.md, "Input records")::

    {"id": "a1", "input": [0.0, 0.5, ...]}      id: a string or a 64-bit integer
    {"id": "a2", "input": [...], "target": 3}    target (optional): what the agent should have said,
                                                 for `update_weights` (online learning): a list of
                                                 numbers, a class index or a label
    [0.0, 0.5, ...]                              a bare array: its id is its line number (1-based)

Output, one record per input record::

    {"id": "a1", "output": [0.1, ...], "agent": "classification-agent-3f2a9c0d1b7e"}
    {"id": 7, "error": {"code": "AF5232", "message": "...", "line": 7}}

One typed decoder reads the lines (msgspec, strict: ``true`` and ``"0.5"`` are not numbers), so
that what is accepted is what the type says. A line that cannot be used becomes an `ErrorRecord`
(never an exception), so that a run goes on after a bad record; a line whose id cannot be read
gets the id ``null``. Blank lines are skipped: they hold no record.

Two paths give the same records: `parse_block` decodes well-formed lines with the record type
and stacks them (the hot path of `af run`); any line it cannot take goes to `parse_line`, the
plain path, which also says exactly what is wrong.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

import msgspec
import numpy as np
import orjson

__all__ = [
    "FLOAT32_LIMIT",
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
    "PARSE_GROUP",
    "ErrorRecord",
    "InputRecord",
    "LineParser",
    "RecordBlock",
    "check_numbers",
    "decode_results",
    "encode_results",
    "parse_block",
    "parse_line",
    "parse_lines",
    "to_float32",
]

#: how much of a bad line an error message quotes
QUOTE_CHARS = 80
#: lines parsed and converted to float32 together (at most the replicas' ``max_batch``)
PARSE_GROUP = 64
#: the longest input line accepted (longer ones become an AF5237 error record)
MAX_LINE_BYTES = 16 << 20
#: the deepest nesting of arrays and objects a line may have (deeper: AF5239); a record needs 2
MAX_DEPTH = 128
#: the smallest magnitude that is no float32: the midpoint between float32's largest value and
#: 2**128. A number below it rounds (to nearest) to a finite float32, so it is accepted:
#: 3.4028235e38, as af prints float32's largest value, reads back as that value
FLOAT32_LIMIT = 2.0**128 - 2.0**103
#: integer ids are 64-bit (what the output encoder writes): from -2**63 to 2**64 - 1
_ID_MIN, _ID_MAX = -(2**63), 2**64 - 1
#: a byte order mark, accepted at the start of the input only
_UTF8_BOM = b"\xef\xbb\xbf"
#: what a blank line may hold (JSON whitespace)
_BLANK = b" \t\r\n"


@dataclass(slots=True)
class InputRecord:
    """A well-formed input record.

    Args:
        seq: its position among the records of the input (0-based), the output order key.
        id: the record's id as given (or its line number for a bare array).
        values: the input vector as parsed (a list of numbers); checked for length and type.
        line: the 1-based line number it came from.
        target: the record's ``target`` as given (a list of floats, a class index or a label), or
            None without one; `update_weights` reads it (afrt.learner).
    """

    seq: int
    id: Union[str, int]
    values: list
    line: int
    target: Any = None


@dataclass(slots=True)
class ErrorRecord:
    """A record that failed; it is written as ``{"id", "error": {"code", "message"[, "line"]}}``.

    Args:
        seq: its position among the records of the input (the output order key).
        id: the record's id; None (written ``null``) when its line has no readable id, since
            ``null`` is never the id of another record.
        code: the error code (AF52xx).
        message: what is wrong, starting with ``line N:`` for an input line.
        line: the 1-based input line, for errors found while reading the input; else None.
    """

    seq: int
    id: Union[str, int, None]
    code: str
    message: str
    line: Union[int, None] = None


# --- the record type -------------------------------------------------------------------------


class _Record(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``{"id": ..., "input": [...]}`` as the hot path takes it.

    Unknown fields send a line to the plain path (which ignores them): skipping a value
    recurses, and only the plain path bounds the nesting first (`MAX_DEPTH`).
    """

    input: list[float]
    id: Union[str, int, msgspec.UnsetType] = msgspec.UNSET
    target: Union[list[float], int, str, msgspec.UnsetType] = msgspec.UNSET


class _OpenRecord(msgspec.Struct, gc=False):
    """The record type with unknown fields ignored: the plain path's, once the nesting is bounded
    (so that ``target`` may be decoded as any value, then checked: `_check_target`)."""

    input: list[float]
    id: Union[str, int, msgspec.UnsetType] = msgspec.UNSET
    target: Any = msgspec.UNSET


class _AnyRecord(msgspec.Struct, gc=False):
    """Any object, its ``id`` and ``input`` kept raw so that each is checked on its own."""

    input: Union[msgspec.Raw, msgspec.UnsetType] = msgspec.UNSET
    id: Union[msgspec.Raw, msgspec.UnsetType] = msgspec.UNSET
    target: Union[msgspec.Raw, msgspec.UnsetType] = msgspec.UNSET


_RECORD = msgspec.json.Decoder(Union[_Record, list[float]])
_OPEN_RECORD = msgspec.json.Decoder(Union[_OpenRecord, list[float]])
_SHAPE = msgspec.json.Decoder(Union[_AnyRecord, list[msgspec.Raw]])
_ID = msgspec.json.Decoder(Union[str, int])
_NUMBERS = msgspec.json.Decoder(list[float])
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])
_NUMBER = msgspec.json.Decoder(float)
_DecodeError, _ValidationError = msgspec.DecodeError, msgspec.ValidationError
#: the JSON type that msgspec's message names (``got `str```), as an error message names it
_KINDS = {"str": "a string", "bool": "a boolean", "null": "null", "array": "an array", "object": "an object",
          "int": "an integer", "float": "a float"}
_GOT = re.compile(r"got `(\w+)`")
_AT_BYTE = re.compile(r"\(byte (\d+)\)")
_NON_FINITE = re.compile(rb"-?(?:NaN|Infinity)")
#: a JSON string, or an unterminated one to the end of the line (its brackets are no nesting)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
#: bytes scanned at a time for the nesting depth
_SCAN_BYTES = 1 << 20
_NESTING_STEP = np.zeros(256, np.int8)
_NESTING_STEP[[ord("["), ord("{")]] = 1
_NESTING_STEP[[ord("]"), ord("}")]] = -1


# --- the plain path: one line, every check, the precise error --------------------------------


def parse_line(line: bytes, *, seq: int, line_no: int, input_size: int) -> InputRecord | ErrorRecord:
    """Parse one input line, checking everything, and say exactly what is wrong with it.

    The checks, in order: the line is UTF-8 and nested at most `MAX_DEPTH` deep (AF5230,
    AF5239); it is well-formed JSON (AF5230; NaN and Infinity: AF5231); an object or an array
    (AF5234); the object's ``id`` is a string or a 64-bit integer (AF5235) and its ``input`` an
    array (AF5234; unknown fields are ignored); the array has ``input_size`` elements (AF5232),
    each a number (AF5233) that rounds to a finite float32 (AF5231).

    Args:
        line: the raw line (bytes or a memoryview; its newline may be included).
        seq: the record's position in the input (output order key).
        line_no: the 1-based line number, the id of records that have none.
        input_size: the length every input vector must have.

    Returns:
        An `InputRecord` (its values a list of floats), or an `ErrorRecord` (AF5230-AF5235,
        AF5239) whose id is None when the line has no readable id.
    """
    raw = bytes(line)
    problem = _check_text(raw)
    if problem is not None:
        return ErrorRecord(seq, None, problem[0], f"line {line_no}: {problem[1]}", line_no)
    decoded = None
    try:
        decoded = _OPEN_RECORD.decode(raw)
        rid, values = _take(decoded, line_no, input_size)
    except _DecodeError:
        values = None
    if values is None:
        return _explain(raw, seq=seq, line_no=line_no, input_size=input_size)
    bad = _first_non_float32(values)
    if bad is not None:
        return ErrorRecord(seq, rid, "AF5231", f"line {line_no}: {_not_float32(bad, repr(values[bad]))}", line_no)
    target, problem = _check_target(_target_of(decoded))
    if problem:
        return ErrorRecord(seq, rid, "AF5300", f"line {line_no}: {problem}", line_no)
    return InputRecord(seq, rid, values, line_no, target)


def _target_of(data: Any) -> Any:
    return None if type(data) is list or data is None or data.target is msgspec.UNSET else data.target


def _check_target(target: Any) -> tuple[Any, str]:
    """Return (the target, "") when it is a list of numbers, an integer or a string, else (None, the problem)."""
    if target is None or type(target) in (int, str):
        return target, ""
    if type(target) is list and all(type(v) in (int, float) for v in target):
        return [float(v) for v in target], ""
    return None, f"`target` must be a list of numbers, a class index or a label, found {_kind(target)}"


def _take(data: Any, line_no: int, input_size: int) -> tuple[Any, list | None]:
    """Return (id, values) of a decoded record; values are None when the record cannot be taken
    as decoded (a wrong length, an id beyond 64 bits): then the plain path says why."""
    if type(data) is list:
        return line_no, (data if len(data) == input_size else None)
    rid, values = data.id, data.input
    if rid is msgspec.UNSET:
        rid = line_no
    elif type(rid) is int and not _ID_MIN <= rid <= _ID_MAX:
        return rid, None
    return rid, (values if len(values) == input_size else None)


def _explain(raw: bytes, *, seq: int, line_no: int, input_size: int) -> InputRecord | ErrorRecord:
    """Read a line the record type refused piece by piece, and say what is wrong with it."""
    try:
        data = _SHAPE.decode(raw)
    except _ValidationError as exc:
        return ErrorRecord(seq, None, "AF5234", f"line {line_no}: expected an object or an array, found {_found(exc)}", line_no)
    except _DecodeError as exc:
        code, message = _malformed(raw, exc)
        return ErrorRecord(seq, None, code, f"line {line_no}: {message}", line_no)
    if type(data) is list:
        rid: Any = line_no
        values, problem = _read_input(raw, data, input_size)
    else:
        rid, why = (line_no, "") if data.id is msgspec.UNSET else _read_id(data.id)
        if why:
            return ErrorRecord(seq, None, "AF5235", f"line {line_no}: {why}", line_no)
        if data.input is msgspec.UNSET:
            values, problem = None, ("AF5234", "`input` must be an array of numbers, found nothing")
        else:
            values, problem = _read_input(bytes(data.input), None, input_size)
    if problem is not None:
        return ErrorRecord(seq, rid, problem[0], f"line {line_no}: {problem[1]}", line_no)
    raw_target = None if type(data) is list or data.target is msgspec.UNSET else data.target
    target, why = _check_target(msgspec.json.decode(bytes(raw_target)) if raw_target is not None else None)
    if why:
        return ErrorRecord(seq, rid, "AF5300", f"line {line_no}: {why}", line_no)
    return InputRecord(seq, rid, values, line_no, target)


def _check_text(raw: bytes) -> tuple[str, str] | None:
    """Return the problem of a line that is no UTF-8 text or is nested too deep, else None."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "AF5230", f"malformed JSON (not UTF-8 at byte {exc.start}) in `{_quote(raw)}`"
    if _too_deep(raw):
        return "AF5239", f"arrays and objects nested deeper than {MAX_DEPTH} levels in `{_quote(raw)}`"
    return None


def _too_deep(raw: bytes) -> bool:
    """Return whether arrays and objects nest deeper than `MAX_DEPTH` in ``raw`` (outside strings).

    The decoder recurses once per level: bounding the depth first keeps a hostile line from
    reaching Python's recursion limit (`[[[[...` 100,000 deep).
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # the usual case: a few brackets at most
        return False
    bare, depth = _STRING.sub(b"", raw), 0
    for start in range(0, len(bare), _SCAN_BYTES):  # a slice at a time: memory stays small on 16 MiB
        part = np.frombuffer(bare, np.uint8, count=min(_SCAN_BYTES, len(bare) - start), offset=start)
        levels = np.cumsum(_NESTING_STEP[part], dtype=np.int32) + depth
        if int(levels.max()) > MAX_DEPTH:
            return True
        depth = int(levels[-1])
    return False


def _malformed(raw: bytes, exc: msgspec.DecodeError) -> tuple[str, str]:
    """Return the code and message of a line that is not JSON: NaN and Infinity are AF5231."""
    detail = str(exc).removeprefix("JSON is malformed: ")
    at = _AT_BYTE.search(detail)
    if at is not None:
        start = int(at[1])
        if raw[start - 1 : start] == b"-":  # msgspec points past the sign of -Infinity
            start -= 1
        token = _NON_FINITE.match(raw, start)
        if token is not None:
            return "AF5231", f"non-finite value `{token[0].decode()}` in `{_quote(raw)}`"
        detail = _AT_BYTE.sub(r"at byte \1", detail)
    return "AF5230", f"malformed JSON ({detail[:1].lower()}{detail[1:]}) in `{_quote(raw)}`"


def _read_id(raw: msgspec.Raw) -> tuple[Any, str]:
    """Return (the id, "") or (None, what is wrong with it)."""
    try:
        rid = _ID.decode(raw)
    except _ValidationError as exc:
        return None, f"`id` must be a string or an integer, found {_found(exc)}"
    if type(rid) is int and not _ID_MIN <= rid <= _ID_MAX:
        return None, f"`id` must be a string or a 64-bit integer, found the integer `{_quote(bytes(raw))}` (beyond 64 bits)"
    return rid, ""


def _read_input(raw: bytes, elements: list | None, input_size: int) -> tuple[list | None, tuple[str, str] | None]:
    """Return (the numbers of the JSON array ``raw``, None) or (None, (code, message)).

    ``elements``: the array's elements as raw values, when the caller has them.
    """
    try:
        values = _NUMBERS.decode(raw)
    except _ValidationError as exc:
        values = None
        if elements is None:
            try:
                elements = _ELEMENTS.decode(raw)
            except _ValidationError:
                return None, ("AF5234", f"`input` must be an array of numbers, found {_found(exc)}")
    count = len(values if values is not None else elements)
    if count != input_size:
        return None, ("AF5232", f"input has {count} values, the agent takes {input_size}")
    if values is None:
        return None, _element_problem(elements)
    bad = _first_non_float32(values)
    if bad is not None:
        return None, ("AF5231", _not_float32(bad, repr(values[bad])))
    return values, None


def _not_float32(index: int, value: str) -> str:
    return f"input[{index}] = {value} is not a finite float32"


def _element_problem(elements: list) -> tuple[str, str]:
    """Return the problem of the first element of ``elements`` (raw values) that is no number."""
    for i, element in enumerate(elements):
        try:
            _NUMBER.decode(element)
        except _ValidationError as exc:
            if "out of range" in str(exc):  # a literal beyond the float range (1e999, 400 digits)
                return "AF5231", _not_float32(i, _quote(bytes(element)))
            return "AF5233", f"input[{i}] is {_found(exc)}, not a number"
    return "AF5233", "input holds a value that is not a number"  # never seen: each alone decoded


def _found(exc: msgspec.ValidationError) -> str:
    """Name the JSON value that ``exc`` refused (``a string``, ``an integer``, ``null``...)."""
    match = _GOT.search(str(exc))
    if match is not None:
        return _KINDS.get(match[1], f"a {match[1]}")
    return "a number out of range" if "out of range" in str(exc) else "a value of another type"


def _quote(line: bytes) -> str:
    text = line.decode("utf-8", "replace").strip()
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."


def _kind(value: Any) -> str:
    """Name the type of a Python value as an error message names it (``an integer``...)."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a float"}.get(type(value), f"a {type(value).__name__}")


# --- float32: the one rule --------------------------------------------------------------------


@functools.cache
def _packer(size: int) -> struct.Struct:
    return struct.Struct(f"{size}f")


def _float32_rows(rows: Sequence[Sequence[Any]], size: int) -> np.ndarray:
    """Return ``rows`` of numbers as one float32 array [len(rows), size]: the one conversion of
    input values, every number rounded to the nearest float32 (a C cast).

    A number is accepted when the result is finite, i.e. when its magnitude is below
    `FLOAT32_LIMIT`; every check of the float32 range looks at what this returns. (``struct``
    packs a row of Python floats 2.7x faster than ``array("d")`` plus a numpy cast.)

    Raises:
        struct.error: a value is not a number (a string, None...), or an integer beyond the
            float range; booleans count as numbers here.
    """
    pack = _packer(size).pack
    return np.frombuffer(b"".join([pack(*row) for row in rows]), np.float32).reshape(len(rows), size)


def _first_non_float32(values: Sequence[Any]) -> int | None:
    """Return the index of the first number of ``values`` that is no finite float32, else None."""
    try:
        finite = np.isfinite(_float32_rows([values], len(values))[0])
    except struct.error:  # an integer beyond the float range (the caller checked the types)
        return next(i for i, v in enumerate(values) if not _is_double(v))
    return None if finite.all() else int(np.argmin(finite))


def _is_double(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def check_numbers(record: InputRecord) -> ErrorRecord | None:
    """Return an error for a vector holding non-numbers or non-finite float32 numbers, else None.

    The exact check of values that come from Python (`Swarm.feed`, `Swarm.submit`), element by
    element: a boolean or a string is not a number (AF5233), a number must round to a finite
    float32 (AF5231).
    """
    for i, v in enumerate(record.values):
        if type(v) is bool or not isinstance(v, (int, float, np.floating, np.integer)):
            return ErrorRecord(record.seq, record.id, "AF5233", f"line {record.line}: input[{i}] is {_kind(v)}, not a number")
    bad = _first_non_float32(record.values)
    if bad is not None:
        value = record.values[bad]
        return ErrorRecord(record.seq, record.id, "AF5231", f"line {record.line}: {_not_float32(bad, repr(value))}")
    return None


def to_float32(rows: Sequence[Sequence[Any]], input_size: int) -> np.ndarray | None:
    """Convert equal-length rows of numbers to one float32 array [len(rows), input_size].

    Strings, null, arrays and objects are refused (``numpy.array`` would turn some into numbers
    or NaN); booleans are taken as numbers: callers with values from Python look for those first
    (`RecordBlock.from_records`); the decoder never gives any.

    Returns:
        The array, or None when a value is not a number or not a finite float32.
    """
    try:
        out = _float32_rows(rows, input_size)
    except struct.error:
        return None
    return out if np.isfinite(out).all() else None


# --- the hot path: a group of lines into one block --------------------------------------------


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
    #: each record's ``target`` (None for a record without one), or None when no record has one
    targets: list[Any] | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def record(self, i: int) -> InputRecord:
        """Return record ``i`` as an `InputRecord` (its values are a float32 row)."""
        target = self.targets[i] if self.targets is not None else None
        return InputRecord(self.seqs[i], self.ids[i], self.array[i], self.lines[i], target)

    def split(self, n: int) -> tuple[RecordBlock, RecordBlock]:
        """Return the first ``n`` records and the rest (views: nothing is copied)."""
        targets = self.targets
        head = RecordBlock(self.seqs[:n], self.ids[:n], self.lines[:n], self.array[:n],
                           targets[:n] if targets is not None else None)
        return head, RecordBlock(self.seqs[n:], self.ids[n:], self.lines[n:], self.array[n:],
                                 targets[n:] if targets is not None else None)

    @classmethod
    def concat(cls, blocks: Sequence[RecordBlock]) -> RecordBlock:
        """Return one block holding the records of ``blocks`` in order."""
        if len(blocks) == 1:
            return blocks[0]
        seqs, ids, lines, targets = [], [], [], []
        for block in blocks:
            seqs += block.seqs
            ids += block.ids
            lines += block.lines
            targets += block.targets if block.targets is not None else [None] * len(block)
        return cls(seqs, ids, lines, np.concatenate([b.array for b in blocks]),
                   targets if any(t is not None for t in targets) else None)

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
        targets = [getattr(r, "target", None) for r in records]
        return cls([r.seq for r in records], [r.id for r in records], [r.line for r in records], array_,
                   targets if any(t is not None for t in targets) else None)


def _check_each(records: Sequence[InputRecord]) -> tuple[list[InputRecord], list[ErrorRecord]]:
    """Split ``records`` by `check_numbers`: (those whose values are finite float32 numbers, the errors)."""
    good: list[InputRecord] = []
    bad: list[ErrorRecord] = []
    for record in records:
        problem = check_numbers(record)
        (bad if problem else good).append(problem or record)
    return good, bad


def _has_bool(values: Any) -> bool:
    return not isinstance(values, np.ndarray) and any([type(v) is bool for v in values])


def parse_block(lines: Sequence[bytes], *, seq: int, line_no: int,
                input_size: int) -> tuple[RecordBlock | None, list[ErrorRecord], int]:
    """Parse consecutive lines (blank ones skipped) into a block: the hot path of `af run`.

    Each line is decoded with the record type; a line that does not decode, has the wrong
    length or an id beyond 64 bits goes to `parse_line`, so the records are exactly those of
    `parse_line` on each non-blank line (tests/afrt/test_records.py holds the two paths equal).

    Args:
        lines: raw lines (bytes or memoryviews), numbered from ``line_no``.
        seq: the ``seq`` of the first record.
        line_no: the line number of the first line.
        input_size: the length every input vector must have.

    Returns:
        (the block of good records or None, the error records in input order, the ``seq`` of
        the next record).
    """
    decode, take, unset = _RECORD.decode, _take, msgspec.UNSET
    seqs: list[int] = []
    ids: list[Any] = []
    numbers: list[int] = []
    rows: list[list] = []
    errors: list[ErrorRecord] = []
    targets: list[Any] | None = None
    for line in lines:
        target = None
        try:
            data = decode(line)
            rid, values = take(data, line_no, input_size)
            if type(data) is not list and data.target is not unset:
                target = data.target
        except _DecodeError:
            values = None
        if values is None:
            if not bytes(line).strip(_BLANK):  # blank lines hold no record
                line_no += 1
                continue
            record = parse_line(line, seq=seq, line_no=line_no, input_size=input_size)
            if type(record) is ErrorRecord:
                errors.append(record)
                seq += 1
                line_no += 1
                continue
            rid, values, target = record.id, record.values, record.target
        if target is not None:
            if targets is None:
                targets = [None] * len(seqs)
            targets.append(target)
        elif targets is not None:
            targets.append(None)
        seqs.append(seq)
        ids.append(rid)
        numbers.append(line_no)
        rows.append(values)
        seq += 1
        line_no += 1
    if not rows:
        return None, errors, seq
    return _stack(seqs, ids, numbers, rows, errors, input_size, targets) + (seq,)


def _stack(seqs: list[int], ids: list[Any], numbers: list[int], rows: list[list], errors: list[ErrorRecord],
           input_size: int, targets: list[Any] | None = None) -> tuple[RecordBlock | None, list[ErrorRecord]]:
    """Stack decoded rows (lists of floats) into a block; a row that is no finite float32 becomes
    an AF5231 error record instead, with the message `parse_line` gives it."""
    array_ = _float32_rows(rows, input_size)
    finite = np.isfinite(array_)
    if finite.all():
        return RecordBlock(seqs, ids, numbers, array_, targets), errors
    good = finite.all(axis=1)
    for i in np.flatnonzero(~good).tolist():
        bad = _first_non_float32(rows[i])
        message = f"line {numbers[i]}: {_not_float32(bad, repr(rows[i][bad]))}"
        errors.append(ErrorRecord(seqs[i], ids[i], "AF5231", message, numbers[i]))
    errors.sort(key=lambda e: e.seq)
    keep = np.flatnonzero(good).tolist()
    if not keep:
        return None, errors
    pick = lambda column: [column[i] for i in keep]  # noqa: E731
    kept_targets = pick(targets) if targets is not None else None
    if kept_targets is not None and all(t is None for t in kept_targets):
        kept_targets = None
    return RecordBlock(pick(seqs), pick(ids), pick(numbers), array_[good], kept_targets), errors


def parse_lines(lines: Iterable[bytes], *, input_size: int, start_seq: int = 0, start_line: int = 1) -> Iterator[InputRecord | ErrorRecord]:
    """Parse lines into records with `parse_line`, skipping blank lines (they hold no record).

    Args:
        lines: raw lines.
        input_size: the length every input vector must have.
        start_seq: the ``seq`` of the first record.
        start_line: the line number of the first line.
    """
    seq = start_seq
    for line_no, line in enumerate(lines, start_line):
        if not bytes(line).strip(_BLANK):
            continue
        yield parse_line(line, seq=seq, line_no=line_no, input_size=input_size)
        seq += 1


# --- the stream: chunks into lines into blocks ------------------------------------------------


class LineParser:
    """Splits the raw chunks of an input stream into lines and parses them, numbering records and lines.

    A UTF-8 byte order mark at the very start of the stream is skipped (anywhere else it is
    malformed JSON). A line longer than ``max_line`` bytes becomes an AF5237 error record and is
    skipped to its end, so that input without newlines cannot grow memory without bound.

    Args:
        input_size: the length every input vector must have.
        block_rows: the most records in one block (the replicas' ``max_batch``).
    """

    def __init__(self, input_size: int, block_rows: int = PARSE_GROUP) -> None:
        self.input_size = input_size
        self.group = max(1, min(PARSE_GROUP, block_rows))
        #: lines longer than this many bytes are skipped (AF5237)
        self.max_line = max(MAX_LINE_BYTES, 64 * input_size)
        self.seq = 0
        self.line_no = 1
        self.tail = b""
        self.head: bytes | None = b""  # the first bytes, until they tell whether a BOM starts the input
        self.skipping = False  # inside an over-long line, already reported
        self.pending: list = []  # complete lines held back to fill a block (``hold``)

    def feed(self, chunk: bytes, *, hold: bool = False) -> tuple[list[RecordBlock], list[ErrorRecord]]:
        """Parse the complete lines in ``chunk`` (all the rest when ``chunk`` is empty).

        Args:
            chunk: the next bytes of the input; empty at its end.
            hold: keep back the lines that do not fill a whole block, to parse them with the next
                chunk (for files, where waiting for more costs nothing): full blocks are what
                the replicas batch best.

        Returns:
            (blocks of good records, at most ``block_rows`` each; the error records, in order).
        """
        end = not chunk
        if self.head is not None:
            chunk = self._skip_bom(chunk)
            if not chunk and not end:
                return [], []
        lines = _split_lines(chunk)
        if self.tail:  # only the first line needs the tail: no copy of the whole chunk
            lines[0] = self.tail + lines[0]
        if self.skipping:
            if len(lines) == 1 and not end:
                self.tail = b""
                return [], []
            del lines[0]
            self.skipping = False
            self.line_no += 1
        self.tail = b"" if end else lines.pop()
        too_long = len(self.tail) > self.max_line
        if too_long:
            self.tail, self.skipping = b"", True
        if self.pending:
            lines = self.pending + lines
            self.pending = []
        if hold and not end and not too_long:
            whole = len(lines) - len(lines) % self.group
            self.pending = lines[whole:]
            del lines[whole:]
        blocks, errors = self._parse(lines)
        if too_long:  # reported after the complete lines before it, in input order
            line = self.line_no
            errors.append(ErrorRecord(self.seq, None, "AF5237", f"line {line}: longer than {self.max_line} bytes, skipped", line))
            self.seq += 1
        return blocks, errors

    def _skip_bom(self, chunk: bytes) -> bytes:
        """Return ``chunk`` without a BOM that starts the input; b"" while the first bytes may still be one."""
        head = self.head + chunk
        if chunk and len(head) < len(_UTF8_BOM) and _UTF8_BOM.startswith(head):
            self.head = head
            return b""
        self.head = None
        return head[len(_UTF8_BOM):] if head.startswith(_UTF8_BOM) else head

    def _parse(self, lines: list) -> tuple[list[RecordBlock], list[ErrorRecord]]:
        # Parsed and converted a group of lines at a time, while their floats are still in the cache.
        blocks: list[RecordBlock] = []
        errors: list[ErrorRecord] = []
        group = self.group
        for start in range(0, len(lines), group):
            part = lines[start : start + group]
            block, bad, self.seq = parse_block(part, seq=self.seq, line_no=self.line_no, input_size=self.input_size)
            self.line_no += len(part)
            if block is not None:
                blocks.append(block)
            errors += bad
        return blocks, errors


def _split_lines(chunk: bytes) -> list:
    """Split like ``chunk.split(b"\\n")``, but the complete lines are memoryviews into ``chunk``.

    Views copy nothing: copying every line of a chunk (~5 KB each for the reference agent)
    costs memory bandwidth that the bare parse loop does not pay.
    """
    view, find, lines, start = memoryview(chunk), chunk.find, [], 0
    append = lines.append
    while (end := find(b"\n", start)) >= 0:
        append(view[start:end])
        start = end + 1
    append(chunk[start:])  # the partial last line, kept as bytes (it becomes the tail)
    return lines


# --- output records ---------------------------------------------------------------------------

_LE_F32 = np.dtype("<f4")


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


