"""Tensor sections: safetensors payloads to numpy arrays and back (docs/format.md, "Binary sections").

Parsing is the `safetensors` library's (never pickle); its errors become diagnostics AF2101-AF2102.
F16 and BF16 tensors are widened to float32 with a note (AF2104); NaN or Inf values give a warning
(AF2103), not an error, because a network may still be usable and the author should decide.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from afcore.diagnostics import Diagnostic

if TYPE_CHECKING:
    from .reader import RawSection

__all__ = ["ACCEPTED_DTYPES", "TENSOR_SECTIONS", "decode_tensors", "encode_tensors"]

#: sections whose payload is a safetensors file; other sections are opaque bytes
TENSOR_SECTIONS = ("neural_weights", "training_data")
#: safetensors dtypes a tensor section may use; all are read as float32
ACCEPTED_DTYPES = ("F32", "F16", "BF16")

_TENSOR_HINT = "write the section with `safetensors.numpy.save` (or `af pack`)"
#: bytes per dtype that `_views` reads in place; files with other dtypes go through the library
_VIEW_DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2}
#: the largest header the safetensors library accepts
_MAX_HEADER = 100_000_000
#: the library reads sizes as 64-bit unsigned integers
_USIZE = 1 << 64
#: elements checked for NaN/Inf at a time (bounds the temporary mask to 1 MiB)
_FINITE_CHUNK = 1 << 20


def _numpy_dtype(name: str) -> np.dtype:
    if name == "BF16":
        import ml_dtypes  # installed with onnx; imported only when a BF16 tensor shows up

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype({"F32": "<f4", "F16": "<f2"}[name])


def decode_tensors(section: RawSection) -> tuple[dict[str, np.ndarray], list[Diagnostic]]:
    """Read a tensor section's safetensors payload as float32 arrays.

    Args:
        section: a section whose payload is a safetensors file.

    Returns:
        The tensors by name (float32, C-contiguous, sorted by name) and the diagnostics found:
        errors AF2101 (not a valid safetensors file) and AF2102 (dtype), warning AF2103 (NaN/Inf),
        note AF2104 (widened from F16/BF16). On an AF2101 error no tensors are returned.
    """
    entries = _views(section.payload)
    if entries is None:
        try:
            entries = safetensors.deserialize(section.payload)
        except safetensors.SafetensorError as exc:
            return {}, [_structure_error(section, str(exc))]
    tensors: dict[str, np.ndarray] = {}
    diagnostics: list[Diagnostic] = []
    for name, entry in sorted(entries, key=lambda item: item[0]):
        array = _to_float32(section, name, entry, diagnostics)
        if array is not None:
            _check_finite(section, name, array, diagnostics)
            tensors[name] = array
    return tensors, diagnostics


def _views(payload: bytes) -> list[tuple[str, dict[str, Any]]] | None:
    """Index a plain safetensors file whose tensors the arrays can view in place, or None for any other.

    ``safetensors.deserialize`` copies every tensor into new bytes (200 MB of fresh memory for a
    50M-parameter network). A file is taken here only when it is, by the library's own rules (header
    size, a JSON object without repeated keys, tensors covering the data exactly, in offset order, with
    sizes that match their shapes), valid, and holds F32/F16/BF16 tensors only; every other file,
    valid or not, goes to the library, which then decides and words the error.

    Returns:
        ``deserialize``'s entries (name, {dtype, shape, data}), ``data`` a view of ``payload``; or None.
    """
    if len(payload) < 8:
        return None
    (size,) = struct.unpack_from("<Q", payload)
    if size > min(_MAX_HEADER, len(payload) - 8) or payload[8:9] != b"{":
        return None
    try:
        header = json.loads(bytes(payload[8 : 8 + size]), object_pairs_hook=_unique_keys, parse_constant=_refuse)
    except (ValueError, UnicodeDecodeError):  # repeated keys and NaN/Infinity raise ValueError too
        return None
    entries = _checked_entries(header, len(payload) - 8 - size)
    if entries is None:
        return None
    data = memoryview(payload)[8 + size :]
    return [(name, {"dtype": dtype, "shape": shape, "data": data[start:end]})
            for name, dtype, shape, start, end in entries]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("repeated key")
    for key in result:
        key.encode("utf-8")  # a lone surrogate (`"\\ud800"`) raises: the library's JSON parser refuses it
    return result


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _checked_entries(header: Any, data_size: int) -> list[tuple[str, str, list[int], int, int]] | None:
    """The tensors of a parsed header when they tile ``data_size`` bytes exactly, else None."""
    if not isinstance(header, dict):
        return None
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return None
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            return None
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _VIEW_DTYPE_SIZES or not _naturals(shape) or not _naturals(offsets) or len(offsets) != 2:
            return None
        count = 1
        for dim in shape:
            count *= dim
            if count >= _USIZE:  # the library refuses a count that overflows as it multiplies
                return None
        if offsets[1] - offsets[0] != count * _VIEW_DTYPE_SIZES[dtype]:
            return None
        entries.append((name, dtype, shape, offsets[0], offsets[1]))
    entries.sort(key=lambda entry: entry[3])
    end = 0
    for entry in entries:
        if entry[3] != end:
            return None
        end = entry[4]
    return entries if end == data_size else None


def _naturals(values: Any) -> bool:
    return isinstance(values, list) and all(type(v) is int and 0 <= v < _USIZE for v in values)


def _structure_error(section: RawSection, detail: str) -> Diagnostic:
    detail = detail.removeprefix("Error while deserializing: ")
    if "unknown variant" in detail:
        return Diagnostic(
            "AF2102",
            "error",
            f"section `{section.name}` uses an unknown tensor dtype ({detail.split(',')[0]})",
            span=section.span,
            help=f"store tensors as F32 (F16 and BF16 are widened); {_TENSOR_HINT}",
        )
    return Diagnostic(
        "AF2101",
        "error",
        f"section `{section.name}` is not a valid safetensors file ({detail})",
        span=section.span,
        help=_TENSOR_HINT,
    )


def _to_float32(section: RawSection, name: str, entry: dict, diagnostics: list[Diagnostic]) -> np.ndarray | None:
    dtype = entry["dtype"]
    if dtype not in ACCEPTED_DTYPES:
        diagnostics.append(
            Diagnostic(
                "AF2102",
                "error",
                f"tensor `{name}` in section `{section.name}` has dtype {dtype}",
                span=section.span,
                help="store it as F32 (F16 and BF16 are accepted and widened to F32)",
            )
        )
        return None
    array = np.frombuffer(entry["data"], dtype=_numpy_dtype(dtype)).reshape(entry["shape"])
    if dtype == "F32":
        # a read-only view of the payload (see `_views`); copied only when misaligned
        return array if array.flags.aligned else array.astype(np.float32)
    diagnostics.append(
        Diagnostic(
            "AF2104",
            "note",
            f"tensor `{name}` in section `{section.name}` is {dtype}; widened to F32",
            span=section.span,
        )
    )
    return array.astype(np.float32)


def _check_finite(section: RawSection, name: str, array: np.ndarray, diagnostics: list[Diagnostic]) -> None:
    if _all_finite(array):
        return
    finite = np.isfinite(array)
    bad = int(finite.size - np.count_nonzero(finite))
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    diagnostics.append(
        Diagnostic(
            "AF2103",
            "warning",
            f"tensor `{name}` in section `{section.name}` holds {bad} NaN or infinite values (first at {list(first)})",
            span=section.span,
            help="retrain or re-export the weights; a NaN makes every output of the network NaN",
        )
    )


def _all_finite(array: np.ndarray) -> bool:
    # in slices, into one small mask: a whole-array mask would be 50 MB of fresh memory per big layer
    flat = array.reshape(-1)
    mask = np.empty(min(flat.size, _FINITE_CHUNK), dtype=bool)
    for start in range(0, flat.size, _FINITE_CHUNK):
        part = flat[start : start + _FINITE_CHUNK]
        if not np.isfinite(part, out=mask[: part.size]).all():
            return False
    return True


def encode_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """Serialise tensors as a safetensors file, deterministically.

    Args:
        tensors: arrays by name; numeric dtypes are stored as they are (little-endian).

    Returns:
        The safetensors bytes: the same for the same names, dtypes, shapes and values.

    Raises:
        UsageError: for a tensor safetensors cannot store (e.g. object arrays).
    """
    from afcore.errors import UsageError

    prepared = {name: np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")) for name, array in sorted(tensors.items())}
    try:
        return safetensors.numpy.save(prepared)
    except (safetensors.SafetensorError, ValueError, TypeError, KeyError) as exc:
        raise UsageError(f"cannot store these tensors as safetensors ({exc})", code="AF0911") from None
