"""A cheap host -> wasm call for i32-only exports, with the public call as fallback; a numpy view over memory.

`wasmtime.Func.__call__` inspects the function type and converts every value on each call (6-19 us). The
C API's ``wasmtime_func_call_unchecked`` skips that (about 1.3 us from Python): it trusts the caller to pass
the right number and types of values, so `FastFunc` checks the signature once, when it is built. The
function is reached through wasmtime-py's private ctypes bindings (``wasmtime._bindings``); this module is
the only place in af that touches them, and it does so only on the wasmtime-py versions it was tested
with (`TESTED_MAJOR_VERSIONS`) and only when every private name it needs is there. Otherwise `fast_func`
returns a `PlainFunc`, which calls the public ``Func.__call__``: the same results and exceptions, slower
per call. tests/afrt/test_fastcall.py compares both with ``Func.__call__`` and forces the fallback.

Traps, including running out of fuel, raise ``wasmtime.Trap`` exactly as ``Func.__call__`` does (other
engine failures raise ``wasmtime.WasmtimeError``); afrt/_errormap.py maps both.
"""

from __future__ import annotations

import ctypes
import functools
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING, Any

import numpy as np
import wasmtime

from afcore.errors import InternalError

if TYPE_CHECKING:
    from wasmtime import Func, Memory, Store

__all__ = ["TESTED_MAJOR_VERSIONS", "FastFunc", "PlainFunc", "fast_func", "fast_path_problem", "memory_view"]

#: wasmtime-py major versions whose private bindings `FastFunc` was tested against (pyproject.toml
#: allows the next major too: there `fast_func` uses the public call until it is tested and added here)
TESTED_MAJOR_VERSIONS = (50,)
#: the wasmtime-py private names this module relies on
_NEEDED = ("_wasmtime_func_call_unchecked", "wasmtime_error_t", "wasmtime_val_raw_t", "wasm_trap_t", "wasmtime_func_t")


def _bindings():
    """Return wasmtime-py's ctypes bindings, or raise InternalError if they changed shape."""
    try:
        from wasmtime import _bindings as ffi
    except ImportError as exc:  # pragma: no cover - only with another wasmtime-py
        raise _changed(str(exc)) from exc
    missing = [name for name in _NEEDED if not hasattr(ffi, name)]
    if missing:
        raise _changed(f"missing {', '.join(missing)}")
    if not hasattr(wasmtime.Store, "_context"):
        raise _changed("Store._context is missing")
    return ffi


def _changed(detail: str) -> InternalError:
    return InternalError(
        f"wasmtime-py {_wasmtime_version()} changed its private bindings ({detail})",
        code="AF9999",
        hint="af falls back to wasmtime's public call; FastFunc itself needs a tested wasmtime-py",
    )


def _wasmtime_version() -> str:
    try:
        return _dist_version("wasmtime")
    except Exception:  # pragma: no cover - a wasmtime without distribution metadata
        return "?"


@functools.cache
def fast_path_problem() -> str | None:
    """Return why `FastFunc` cannot be used with this wasmtime-py, or None when it can."""
    version = _wasmtime_version()
    major = version.split(".")[0]
    if not major.isdigit() or int(major) not in TESTED_MAJOR_VERSIONS:
        return f"wasmtime-py {version} is not a version FastFunc was tested with"
    try:
        _bindings()
    except InternalError as error:
        return error.message
    return None


class PlainFunc:
    """An exported function called through the public ``Func.__call__``: `FastFunc`'s fallback.

    Args:
        store: the store the function's instance lives in.
        func: the export.
    """

    __slots__ = ("_store", "_func")

    def __init__(self, store: Store, func: Func) -> None:
        self._store, self._func = store, func

    def __call__(self, *args: int) -> Any:
        """Call the function; the same results and exceptions as `FastFunc`."""
        return self._func(self._store, *args)


def fast_func(store: Store, func: Func) -> FastFunc | PlainFunc:
    """Return the fastest caller of an i32-only export that this wasmtime-py allows.

    Args:
        store: the store the function's instance lives in.
        func: the export, e.g. ``instance.exports(store)["infer"]``.

    Returns:
        A `FastFunc`, or a `PlainFunc` when `fast_path_problem` names a reason.

    Raises:
        InternalError: if the signature is not i32-only with at most one result.
    """
    if fast_path_problem() is not None:
        return PlainFunc(store, func)
    try:
        return FastFunc(store, func)
    except AttributeError:  # a private attribute of Store or Func moved: the public call still works
        return PlainFunc(store, func)


class FastFunc:
    """An exported wasm function with i32 parameters and at most one i32 result, callable in ~1 us.

    Like its Store, a FastFunc is not thread-safe. It keeps the Store alive.

    Args:
        store: the store the function's instance lives in.
        func: the export, e.g. ``instance.exports(store)["infer"]``.

    Raises:
        InternalError: if the signature is not i32-only with at most one result (the caller should have
            checked the module's ABI), or if wasmtime-py's private bindings changed shape (use `fast_func`,
            which falls back to `PlainFunc` instead).
    """

    __slots__ = ("_keep", "_store", "_call", "_args", "_nparams", "_has_result", "_ints", "_trap")

    def __init__(self, store: Store, func: Func) -> None:
        ffi = _bindings()
        if not hasattr(store, "_Store__context"):
            raise _changed("Store has no context field")
        ty = func.type(store)
        i32 = wasmtime.ValType.i32()
        if any(p != i32 for p in ty.params) or len(ty.results) > 1 or any(r != i32 for r in ty.results):
            raise InternalError(
                f"FastFunc needs an i32-only function, got {ty.params} -> {ty.results}",
                code="AF9999",
                hint="check the module's exports against the ABI before building a FastFunc",
            )
        self._nparams = len(ty.params)
        self._has_result = bool(ty.results)
        # the C API reads the arguments from and writes the results to one array of 16-byte wasmtime_val_raw_t
        slots = (ffi.wasmtime_val_raw_t * max(self._nparams, 1))()
        self._ints = (ctypes.c_int32 * (4 * len(slots))).from_buffer(slots)
        self._trap = ctypes.c_void_p()
        context = store._context()
        func_struct = func._func
        # a prototype with plain void* arguments skips ctypes' per-call pointer type checks (2.4 us -> 0.9 us);
        # the objects behind the raw addresses are kept alive in _keep
        self._call = _RAW_CALL(ctypes.cast(ffi._wasmtime_func_call_unchecked, ctypes.c_void_p).value)
        self._args = (
            ctypes.cast(context, ctypes.c_void_p).value,
            ctypes.addressof(func_struct),
            ctypes.addressof(slots),
            len(slots),
            ctypes.addressof(self._trap),
        )
        self._store = store
        self._keep = (context, func, func_struct, slots, ffi)

    def __call__(self, *args: int) -> int | None:
        """Call the function.

        Args:
            *args: one int per parameter (wrapped to 32 bits like ``Func.__call__`` does).

        Returns:
            The i32 result (signed), or None for a function without results.

        Raises:
            wasmtime.Trap: the function trapped (out of fuel, out-of-bounds access, unreachable, ...).
            wasmtime.WasmtimeError: the engine failed to run the call.
            InternalError: wrong number of arguments, or the store was closed (a call would touch freed memory).
        """
        if self._store._Store__context is None:
            raise InternalError("FastFunc called after its wasmtime Store was closed", code="AF9999")
        if len(args) != self._nparams:
            raise InternalError(f"expected {self._nparams} arguments, got {len(args)}", code="AF9999")
        if args:
            self._ints[0 : 4 * len(args) : 4] = args
        error = self._call(*self._args)
        if error or self._trap.value:
            self._raise(error)
        return self._ints[0] if self._has_result else None

    def _raise(self, error: int | None) -> None:
        ffi = self._keep[-1]
        if error:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, ctypes.POINTER(ffi.wasmtime_error_t)))
        trap = ctypes.cast(self._trap.value, ctypes.POINTER(ffi.wasm_trap_t))
        self._trap.value = None  # the Trap object owns (and frees) the pointer now
        raise wasmtime.Trap._from_ptr(trap)


#: ``wasmtime_error_t *wasmtime_func_call_unchecked(context, func, args_and_results, len, wasm_trap_t **trap)``
_RAW_CALL = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                             ctypes.c_void_p)


def memory_view(store: Store, memory: Memory, offset: int, count: int, dtype: np.dtype = np.float32) -> np.ndarray:
    """Return a writable numpy view of ``count`` values of ``dtype`` at byte ``offset`` of ``memory``.

    The view aliases the linear memory (no copy, ~0.2 us to fill 784 floats). It dangles once the memory
    grows or the store is closed: build a new one after ``Memory.grow``.

    Args:
        store: the store that owns ``memory``.
        memory: an exported linear memory.
        offset: the byte address of the first value.
        count: the number of values.
        dtype: the element type, little-endian float32 by default.

    Returns:
        A 1-D array over the memory.

    Raises:
        InternalError: if the range does not fit in the memory.
    """
    dtype = np.dtype(dtype)
    size = memory.data_len(store)
    if offset < 0 or count < 0 or offset + count * dtype.itemsize > size:
        raise InternalError(f"memory range {offset}+{count * dtype.itemsize} exceeds the memory's {size} bytes",
                            code="AF9999")
    raw = (ctypes.c_ubyte * size).from_address(ctypes.addressof(memory.data_ptr(store).contents))
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
