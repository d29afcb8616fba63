"""Tensor sections: safetensors payloads to numpy arrays and back (docs/format.md, "Binary sections").

Parsing is the `safetensors` library's (never pickle); its errors become diagnostics AF2101-AF2102.
F16 and BF16 tensors are widened to float32 with a note (AF2104); NaN or Inf values give a warning
(AF2103), not an error, because a network may still be usable and the author should decide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

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
        return array.astype(np.float32, copy=False)
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
    finite = np.isfinite(array)
    if finite.all():
        return
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
