"""The input parser of `af run`, old vs new, side by side in one run (issue 8, "one strict record decoder").

Parses the example input (examples/classification-inputs.jsonl, 784 floats per line) replicated to
``--lines`` lines, in chunks of `afrt.stream.READ_CHUNK` with ``hold=True``, as `af run` parses a
file: bytes in, float32 blocks and error records out. Nothing else runs (no agent, no output).

- new: `afrt.records.LineParser` (msgspec, strict typed decoding).
- old: the parser as it was at ``--old`` (orjson, the stdlib fallback and the boolean detector),
  loaded from git: `afrt/records.py` as a module and `_Parser`/`_split_lines` out of
  `afrt/stream.py`.

Rounds alternate old and new; other processes only ever slow a round down, so each side's best
round is its speed. Prints lines/s of each, the ratio new/old of the best rounds and the median of
the paired rounds' ratios.

Usage: python benchmarks/records.py [--lines 20000] [--rounds 5] [--old COMMIT] [--ids example|record]
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INPUTS = ROOT / "examples" / "classification-inputs.jsonl"
#: the last commit with the old parser (records: orjson + stdlib fallback + boolean detector)
OLD_COMMIT = "984563cdcbd785d11fdfe50284511f409b89416f"
INPUT_SIZE = 784


def load_old_parser(commit: str) -> type:
    """Return the old `_Parser` class, built from the sources at ``commit``."""
    def show(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    records = types.ModuleType("old_records")
    sys.modules[records.__name__] = records  # dataclasses look their module up
    exec(compile(show("afrt/records.py"), "old_records.py", "exec"), records.__dict__)
    stream = show("afrt/stream.py")
    namespace = dict(records.__dict__)
    for node in ast.parse(stream).body:  # the parser, its helper and its constants only
        names = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        if getattr(node, "name", None) in ("_Parser", "_split_lines") or set(names) & {"PARSE_GROUP", "MAX_LINE_BYTES"}:
            exec(compile(ast.Module([node], []), "old_stream.py", "exec"), namespace)
    return namespace["_Parser"]


def make_input(lines: int, *, ids: str = "example") -> bytes:
    """Return the example's lines cycled to ``lines`` lines.

    ``ids``: ``example`` keeps the example's ids (``digit-0001``...); ``record`` makes them
    ``record-N``, whose letters r and a sent the old parser's lines through its boolean check.
    """
    rows = [line for line in INPUTS.read_bytes().splitlines() if line.strip()]
    out = [rows[i % len(rows)] for i in range(lines)]
    if ids == "record":
        out = [b'{"id": "record-%d", ' % i + line[line.index(b'"input"'):] for i, line in enumerate(out)]
    return b"\n".join(out) + b"\n"


def parse_all(parser_type: type, data: bytes, chunk: int) -> tuple[float, int, int]:
    """Feed ``data`` to a fresh parser in chunks; return (seconds, good records, errors)."""
    parser = parser_type(INPUT_SIZE, 64)
    good = bad = 0
    started = time.perf_counter()
    for start in range(0, len(data) + 1, chunk):
        blocks, errors = parser.feed(data[start : start + chunk], hold=True)
        good += sum(len(b) for b in blocks)
        bad += len(errors)
    blocks, errors = parser.feed(b"")
    seconds = time.perf_counter() - started
    return seconds, good + sum(len(b) for b in blocks), bad + len(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old", default=OLD_COMMIT, help="the commit whose parser is the baseline")
    ap.add_argument("--ids", choices=["example", "record"], default="example",
                    help="keep the example's ids, or use record-N ids (the old parser's boolean check runs)")
    args = ap.parse_args()

    from afrt.records import LineParser
    from afrt.stream import READ_CHUNK

    old_parser = load_old_parser(args.old)
    with tempfile.TemporaryDirectory() as tmp:  # the replicated input, as a file would hold it
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(make_input(args.lines, ids=args.ids))
        data = path.read_bytes()
    old_counts = parse_all(old_parser, data, READ_CHUNK)[1:]
    new_counts = parse_all(LineParser, data, READ_CHUNK)[1:]
    assert old_counts == new_counts == (args.lines, 0), (old_counts, new_counts)

    old_times, new_times = [], []
    for _ in range(args.rounds):
        old_times.append(parse_all(old_parser, data, READ_CHUNK)[0])
        new_times.append(parse_all(LineParser, data, READ_CHUNK)[0])
    old_rate, new_rate = args.lines / min(old_times), args.lines / min(new_times)
    paired = statistics.median(o / n for o, n in zip(old_times, new_times))
    print(f"{args.lines} lines of {INPUT_SIZE} floats ({len(data) / 1e6:.1f} MB, {args.ids} ids), {args.rounds} rounds")
    for label, rate in ((f"old parser ({args.old[:7]})", old_rate), ("new parser (msgspec)", new_rate)):
        print(f"{label:22} {rate / 1e3:7.1f} k lines/s  ({1e6 / rate:.1f} us/line)")
    print(f"ratio new/old: {new_rate / old_rate:.2f}x (best rounds), {paired:.2f}x (median of paired rounds)")


if __name__ == "__main__":
    main()
