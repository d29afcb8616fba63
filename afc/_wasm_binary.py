"""Splice a binary data section into an assembled WebAssembly module.

The weights never pass through WebAssembly text: `lower_wasm` assembles the code-only module with
`wasmtime.wat2wasm`, then this module inserts a data section (id 11) of active segments right after the
code section (id 10), before any trailing custom sections (the ``name`` section). No datacount section
(id 12) is needed because the code uses neither ``memory.init`` nor ``data.drop``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Protocol, Union

import numpy as np

from afcore.errors import LoweringError

__all__ = ["DataSegment", "SegmentWriter", "splice_data_section", "validate_module"]

_MAGIC = b"\0asm\1\0\0\0"
_CODE_SECTION = 10
_DATA_SECTION = 11
_I32_CONST = 0x41
_END = 0x0B


class SegmentWriter(Protocol):
    """Segment contents that write themselves into the module buffer (saves a copy of big weights)."""

    nbytes: int

    def write_into(self, out: memoryview) -> None:
        """Fill ``out`` (``nbytes`` uninitialized bytes) with the segment's contents, every byte of it."""


@dataclass(frozen=True)
class DataSegment:
    """One active data segment: ``data`` (an array, or a `SegmentWriter`) placed in memory 0 at ``offset``."""

    offset: int
    data: Union[np.ndarray, SegmentWriter]


def uleb128(value: int) -> bytes:
    """Return the unsigned LEB128 encoding of ``value``."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb128(value: int) -> bytes:
    """Return the signed LEB128 encoding of ``value``."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _read_uleb(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _code_section_end(module: bytes) -> int:
    """Return the offset just past the code section (or past the last non-custom section)."""
    if module[:8] != _MAGIC:
        raise LoweringError("wat2wasm returned no WebAssembly module", code="AF3199")
    pos, insert_at = 8, 8
    while pos < len(module):
        section_id = module[pos]
        size, body = _read_uleb(module, pos + 1)
        pos = body + size
        if section_id == _DATA_SECTION:
            raise LoweringError("the generated code already has a data section", code="AF3199")
        if section_id != 0:
            insert_at = pos
    return insert_at


def _segment_header(offset: int, nbytes: int) -> bytes:
    # flags 0 = active segment for memory 0, then the offset expression `i32.const offset; end`; i32.const
    # takes a signed 32-bit immediate, so addresses from 2 GiB up are written as their negative twin
    signed = offset - (1 << 32) if offset >= 1 << 31 else offset
    return b"\0" + bytes([_I32_CONST]) + sleb128(signed) + bytes([_END]) + uleb128(nbytes)


def splice_data_section(module: bytes, segments: list[DataSegment]) -> bytearray:
    """Return ``module`` with a data section holding ``segments`` inserted after its code section.

    The output is written once, into a new buffer of the final size (`_new_buffer`); a
    `SegmentWriter` fills its part in place.

    Args:
        module: a WebAssembly binary without a data section.
        segments: the active segments, in any order; offsets are i32 addresses in memory 0.

    Returns:
        The complete module, as a bytearray.

    Raises:
        LoweringError: AF3199 if ``module`` is not a module or already has a data section.
    """
    cut = _code_section_end(module)
    headers = [_segment_header(s.offset, s.data.nbytes) for s in segments]
    payload_size = len(uleb128(len(segments))) + sum(len(h) + s.data.nbytes for h, s in zip(headers, segments))
    section_head = bytes([_DATA_SECTION]) + uleb128(payload_size) + uleb128(len(segments))
    result, view = _new_buffer(len(module) + len(section_head) + payload_size - len(uleb128(len(segments))))
    view[:cut] = module[:cut]
    pos = cut + len(section_head)
    view[cut:pos] = section_head
    for header, segment in zip(headers, segments):
        view[pos : pos + len(header)] = header
        pos += len(header)
        end = pos + segment.data.nbytes
        if isinstance(segment.data, np.ndarray):
            view[pos:end] = memoryview(np.ascontiguousarray(segment.data).reshape(-1).view(np.uint8))
        else:
            segment.data.write_into(view[pos:end])
        pos = end
    view[pos:] = module[cut:]
    view.release()
    return result


def _new_buffer(size: int) -> tuple[bytearray, memoryview]:
    """Return a new zeroed buffer of ``size`` bytes and a writable view of it.

    A bytearray, not bytes: the module is written in place once (no join, no second 200 MB copy),
    and every consumer (hashlib, the tar writer, wasmtime) takes any buffer.
    """
    buffer = bytearray(size)
    return buffer, memoryview(buffer)


def validate_module(wasm: bytes | bytearray) -> None:
    """Validate a module with wasmtime without copying it (``wasmtime.Module.validate`` copies 200 MB first).

    Uses wasmtime-py's ctypes binding of ``wasmtime_module_validate``, private API: wasmtime is pinned
    to 50.* in pyproject.toml, and tests/afc/test_lower_wasm.py checks this against the public method.

    Raises:
        wasmtime.WasmtimeError: when wasmtime rejects the module.
    """
    import wasmtime
    from wasmtime import _ffi

    engine = wasmtime.Engine()  # held in a variable: a temporary would be freed before the call
    if isinstance(wasm, bytearray):
        pointer = (ctypes.c_uint8 * len(wasm)).from_buffer(wasm)
    else:
        pointer = ctypes.cast(ctypes.c_char_p(wasm), ctypes.POINTER(ctypes.c_uint8))
    error = _ffi.wasmtime_module_validate(engine.ptr(), pointer, len(wasm))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
