"""Training data for `afc.train`: the `training_data` section, or a safetensors, JSONL or FANN `.data` file.

Every source becomes a `Dataset`: float32 ``inputs`` [N, input_size] and ``targets`` [N, output_size]
plus the sha256 of the bytes it came from. A fault in a data file is a `CheckError` whose diagnostic
names the file and, for the text formats, the line (AF6003-AF6009, docs/diagnostics.md "Training");
nothing in a data file can raise anything else.

- safetensors: tensors ``inputs`` [N, input_size] and ``targets`` [N, output_size] (or [N] class
  indices), nothing else; parsed by `afc.tensors.decode_tensors`, as the `training_data` section is.
- JSONL: one object per line, ``{"input": [...], "target": [...]}``; ``"target": k`` (an integer) is
  a class index, the one-hot row with a 1 at k. Blank lines are skipped.
- FANN `.data` (``fann_read_train_from_file``): a first line ``N num_input num_output``, then for
  each record its inputs and its outputs, numbers separated by white space.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, NoReturn

import numpy as np

from afcore.diagnostics import Diagnostic
from afcore.errors import CheckError, UsageError
from afcore.spans import Span

__all__ = ["DATA_FORMATS", "Dataset", "dataset_from_tensors", "ensure_finite", "load_dataset"]

#: file suffix -> data format that `load_dataset` reads
DATA_FORMATS = {".safetensors": "safetensors", ".jsonl": "jsonl", ".ndjson": "jsonl", ".data": "fann"}

_NUMBER = re.compile(r"\S+")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Training records as float32 arrays.

    Attributes:
        inputs: [N, input_size] float32, C-contiguous.
        targets: [N, output_size] float32, C-contiguous.
        source: the data file's path, or ``<path>:training_data`` for the section.
        sha256: hex digest of the bytes the records were read from (the file, or the section's
            decompressed safetensors payload).
        lines: the 1-based line of each record in a text file, or None (binary sources).
    """

    inputs: np.ndarray
    targets: np.ndarray
    source: str
    sha256: str
    lines: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def span_of(self, index: int) -> Span | None:
        """Return where record ``index`` (0-based) is written, or None when the source has no lines."""
        return Span(self.source, self.lines[index], 1) if self.lines is not None else None

    def describe(self, index: int) -> str:
        """Return ``record N`` (1-based), the way messages name a record."""
        return f"record {index + 1}"


def load_dataset(path: str | Path, *, input_size: int, output_size: int) -> Dataset:
    """Read a data file in the format its suffix names (`DATA_FORMATS`).

    Args:
        path: a ``.safetensors``, ``.jsonl``/``.ndjson`` or FANN ``.data`` file.
        input_size: the network's inputs; every record must have this many.
        output_size: the network's outputs; every target must have this many (or be a class index).

    Returns:
        The records and the sha256 of the file.

    Raises:
        UsageError: AF6000 when the file cannot be read, AF6001 for an unknown suffix.
        CheckError: AF6003-AF6009 (and AF2101/AF2102 for a broken safetensors file), naming the file
            and, for JSONL and FANN files, the line.
    """
    path = Path(path)
    kind = DATA_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"`{path}` is not a data file af reads", code="AF6001",
                         hint="use a .safetensors, .jsonl or FANN .data file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read `{path}`: {exc.strerror or exc}", code="AF6000",
                         hint="check the path and its permissions") from None
    reader = {"safetensors": _read_safetensors, "jsonl": _read_jsonl, "fann": _read_fann}[kind]
    dataset = reader(data, str(path), input_size, output_size)
    ensure_finite(dataset)
    return dataset


def dataset_from_tensors(tensors: Mapping[str, np.ndarray], *, source: str, sha256: str, input_size: int,
                         output_size: int) -> Dataset:
    """Check decoded ``inputs``/``targets`` tensors and return them as a `Dataset`.

    Args:
        tensors: float32 arrays by name (``afc.tensors.decode_tensors`` output).
        source: what messages name (a path).
        sha256: digest of the bytes they were decoded from.
        input_size: the network's inputs.
        output_size: the network's outputs.

    Raises:
        CheckError: AF6003 for a missing or unexpected tensor, AF6004 for a shape that does not fit.
    """
    names = set(tensors)
    if names != {"inputs", "targets"}:
        missing, extra = sorted({"inputs", "targets"} - names), sorted(names - {"inputs", "targets"})
        what = f"has no tensor `{missing[0]}`" if missing else f"has an unexpected tensor `{extra[0]}`"
        _fail("AF6003", f"`{source}` {what}", None, "a data file holds exactly `inputs` and `targets`")
    inputs, targets = tensors["inputs"], tensors["targets"]
    if targets.ndim == 1 and len(targets) == len(inputs):
        targets = _one_hot_column(targets, source, output_size)
    expected = f"`inputs` [N, {input_size}] and `targets` [N, {output_size}]"
    if (inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0]
            or inputs.shape[1] != input_size or targets.shape[1] != output_size):
        _fail("AF6004", f"`{source}` holds `inputs` {list(inputs.shape)} and `targets` {list(targets.shape)}", None,
              f"the network takes {expected}")
    return Dataset(np.ascontiguousarray(inputs, np.float32), np.ascontiguousarray(targets, np.float32), source,
                   sha256)


def ensure_finite(dataset: Dataset) -> None:
    """Check that every input and target is finite.

    Raises:
        CheckError: AF6008, naming the first record (and its line, for text files) with a NaN or infinity.
    """
    for array in (dataset.inputs, dataset.targets):
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            index = int(np.argmax(bad))
            _fail("AF6008", f"{dataset.describe(index)} of `{dataset.source}` holds NaN or an infinite value",
                  dataset.span_of(index), "training needs finite numbers")


def _fail(code: str, message: str, span: Span | None, hint: str) -> NoReturn:
    raise CheckError([Diagnostic(code, "error", message, span=span, help=hint)])


def _one_hot_column(indices: np.ndarray, source: str, output_size: int) -> np.ndarray:
    """Turn class indices [N] into one-hot rows [N, output_size]."""
    valid = (indices == np.round(indices)) & (indices >= 0) & (indices < output_size)
    if not valid.all():
        index = int(np.argmax(~valid))
        _fail("AF6006", f"record {index + 1} of `{source}`: class {indices[index]} is not an integer in "
              f"0..{output_size - 1}", None, "1-D `targets` are class indices")
    return np.eye(output_size, dtype=np.float32)[indices.astype(np.int64)]


def _read_safetensors(data: bytes, path: str, input_size: int, output_size: int) -> Dataset:
    from .reader import RawSection
    from .tensors import decode_tensors

    tensors, diagnostics = decode_tensors(RawSection("training_data", "raw", data, Span(path, 1, 1), 0))
    errors = [d for d in diagnostics if d.is_error]
    if errors:
        # A binary file has no lines to frame: name the file in the message instead (as `af pack` does).
        raise CheckError([replace(d, span=None, message=f"`{path}`: {d.message}") for d in errors])
    return dataset_from_tensors(tensors, source=path, sha256=hashlib.sha256(data).hexdigest(),
                                input_size=input_size, output_size=output_size)


def _decode_text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        _fail("AF6005", f"`{path}` is not UTF-8 text (byte {exc.start})", Span(path, line, 1),
              "save the file as UTF-8")


def _read_jsonl(data: bytes, path: str, input_size: int, output_size: int) -> Dataset:
    import orjson

    inputs: list[list[float]] = []
    targets: list[Any] = []
    lines: list[int] = []
    for number, line in enumerate(_decode_text(data, path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            _fail("AF6005", f"line {number} of `{path}` is not JSON: {exc.msg}",
                  Span(path, number, exc.colno or 1), 'write one object per line: {"input": [...], "target": [...]}')
        span = Span(path, number, 1)
        inputs.append(_jsonl_row(record, "input", input_size, span))
        targets.append(_jsonl_target(record, output_size, span))
        lines.append(number)
    if not inputs:
        _fail("AF6009", f"`{path}` holds no records", Span(path, 1, 1), "add one JSON object per line")
    return Dataset(np.array(inputs, dtype=np.float32), np.array(targets, dtype=np.float32), path,
                   hashlib.sha256(data).hexdigest(), tuple(lines))


def _jsonl_row(record: Any, key: str, size: int, span: Span) -> list[float]:
    if not isinstance(record, dict) or key not in record:
        _fail("AF6005", f"line {span.line} of `{span.path}` has no `{key}`", span,
              'write one object per line: {"input": [...], "target": [...]}')
    row = record[key]
    if not isinstance(row, list) or not all(type(v) in (int, float) for v in row):
        _fail("AF6006", f"`{key}` on line {span.line} of `{span.path}` is not a list of numbers", span,
              f"`{key}` is a list of {size} numbers")
    if len(row) != size:
        _fail("AF6006", f"`{key}` on line {span.line} of `{span.path}` has {len(row)} values, not {size}", span,
              f"the network has {size} {'inputs' if key == 'input' else 'outputs'}")
    return row


def _jsonl_target(record: dict, output_size: int, span: Span) -> list[float]:
    if "target" in record and type(record["target"]) is int:
        k = record["target"]
        if not 0 <= k < output_size:
            _fail("AF6006", f"class {k} on line {span.line} of `{span.path}` is not in 0..{output_size - 1}", span,
                  "an integer `target` is a class index; a network with one output takes `target: [value]`")
        row = [0.0] * output_size
        row[k] = 1.0
        return row
    return _jsonl_row(record, "target", output_size, span)


def _read_fann(data: bytes, path: str, input_size: int, output_size: int) -> Dataset:
    text = _decode_text(data, path)
    first, numbers, token_lines = _fann_tokens(text, path)
    count, n_in, n_out = first
    if (n_in, n_out) != (input_size, output_size):
        _fail("AF6004", f"`{path}` has {n_in} inputs and {n_out} outputs per record; the network has "
              f"{input_size} and {output_size}", Span(path, 1, 1), "the first line is `N num_input num_output`")
    width = n_in + n_out
    if len(numbers) != count * width:
        # too few: point at the last number there is; too many: at the first one left over
        at = count * width if len(numbers) > count * width else len(numbers) - 1
        line = int(token_lines[at]) if at >= 0 else 1
        _fail("AF6007", f"`{path}` declares {count} records of {width} numbers ({count * width}) but holds "
              f"{len(numbers)}", Span(path, line, 1), "each record is its inputs then its outputs")
    table = numbers.reshape(count, width)
    lines = tuple(int(token_lines[i * width]) for i in range(count))
    return Dataset(np.ascontiguousarray(table[:, :n_in]), np.ascontiguousarray(table[:, n_in:]), path,
                   hashlib.sha256(data).hexdigest(), lines)


def _fann_tokens(text: str, path: str) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """Return the header counts, every number after them as float32, and each number's line.

    libfann reads the file with ``fscanf``, so only the order of the numbers matters, not the lines.
    """
    rows = text.splitlines()
    token_lines = np.repeat(np.arange(1, len(rows) + 1), [len(row.split()) for row in rows])
    tokens = text.split()
    head = tokens[:3]
    if len(head) != 3 or not all(t.isdigit() for t in head) or int(head[0]) == 0:
        _fail("AF6007", f"`{path}` does not start with `N num_input num_output`", Span(path, 1, 1),
              "a FANN .data file starts with three positive integers")
    try:
        numbers = np.array(tokens[3:], dtype=np.float64)
    except ValueError:
        _bad_fann_token(rows, path, skip=3)
    return (int(head[0]), int(head[1]), int(head[2])), numbers.astype(np.float32), token_lines[3:]


def _bad_fann_token(rows: list[str], path: str, *, skip: int) -> NoReturn:
    for number, row in enumerate(rows, start=1):
        for match in _NUMBER.finditer(row):
            if skip:
                skip -= 1
                continue
            try:
                float(match.group())
            except ValueError:
                _fail("AF6007", f"`{match.group()}` on line {number} of `{path}` is not a number",
                      Span(path, number, match.start() + 1, number, match.end() + 1), "records hold numbers only")
    raise AssertionError("numpy refused a token that float() reads")  # pragma: no cover
