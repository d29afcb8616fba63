"""A hypothesis strategy that mutates seed inputs the way byte-level fuzzers do (libFuzzer's mutators).

`fuzz_inputs(seeds)` draws a seed and applies one to four mutations: flip bits, set a byte to an
"interesting" value, insert, delete, duplicate or overwrite a range, truncate, splice in part of
another seed. Random bytes are drawn too, but rarely: they stop at the first magic number.
"""

from __future__ import annotations

from typing import Sequence

from hypothesis import strategies as st

#: bytes that tend to mean something to a parser: NUL, edges of signed and unsigned bytes, line
#: breaks, YAML/JSON punctuation, digits, quotes, tar's digits, base64's padding
INTERESTING = b"\x00\x01\x7f\x80\xff\n\r\t :-[]{},\"'0179=#&*!|>%@`\\"


@st.composite
def fuzz_inputs(draw: st.DrawFn, seeds: Sequence[bytes], max_size: int = 1 << 16) -> bytes:
    """Draw a mutated seed (or, one time in ten, plain random bytes)."""
    if not seeds or draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(list(seeds))))
    for _ in range(draw(st.integers(1, 4))):
        _mutate(draw, data, seeds)
    return bytes(data[:max_size])


def _position(draw: st.DrawFn, data: bytearray) -> int:
    return draw(st.integers(0, max(len(data) - 1, 0)))


def _mutate(draw: st.DrawFn, data: bytearray, seeds: Sequence[bytes]) -> None:
    kind = draw(st.sampled_from(["flip", "interesting", "insert", "delete", "duplicate", "truncate", "splice",
                                 "overwrite"]))
    if not data and kind not in ("insert", "splice"):
        kind = "insert"
    at = _position(draw, data)
    if kind == "flip":
        data[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "interesting":
        data[at] = draw(st.sampled_from(list(INTERESTING)))
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=16)) if draw(st.booleans()) else bytes(
            [draw(st.sampled_from(list(INTERESTING)))] * draw(st.integers(1, 64)))
    elif kind == "delete":
        del data[at : at + draw(st.integers(1, 64))]
    elif kind == "duplicate":
        size = draw(st.integers(1, 256))
        data[at:at] = data[at : at + size] * draw(st.integers(1, 8))
    elif kind == "truncate":
        del data[at:]
    elif kind == "overwrite":
        piece = draw(st.binary(min_size=1, max_size=8))
        data[at : at + len(piece)] = piece
    else:  # splice: a piece of another seed
        other = draw(st.sampled_from(list(seeds)))
        start = draw(st.integers(0, max(len(other) - 1, 0)))
        data[at:at] = other[start : start + draw(st.integers(1, 512))]
