"""The one place where the runtime catches foreign exceptions and turns them into af errors.

wasmtime raises two unrelated roots (`wasmtime.Trap` for traps, `wasmtime.WasmtimeError` for
everything else) and onnxruntime raises its own pybind11 classes (`Fail`, `InvalidArgument`, ...),
none of which share a base with each other or with ours. As httpx's
``map_httpcore_exceptions`` does, each context manager here picks the most specific af class and
does ``raise mapped(msg) from exc``, so that callers see only `afcore.errors` and the original
is kept as ``__cause__`` for debugging.

The managers are small classes rather than ``@contextmanager`` generators because the wasm and
onnx ones wrap every inference call and a generator costs about a microsecond per use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from afcore.errors import (
    AfError,
    AgentTrap,
    BundleError,
    InferenceError,
    ResourceLimitError,
)

if TYPE_CHECKING:
    from types import TracebackType

    import wasmtime

__all__ = [
    "OnnxCallErrors",
    "WasmCallErrors",
    "call_or_none",
    "onnxruntime_errors",
    "wasmtime_errors",
    "map_onnx_load_errors",
    "map_onnx_parse_errors",
    "map_wasm_compile_errors",
    "map_wasm_instantiate_errors",
    "trap_frames",
]


@functools.cache
def onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """Return every exception class onnxruntime's binding raises (they all derive from Exception only).

    Imported on first use, as wasmtime below: a wasm-only run never loads onnxruntime (~40 ms).
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(
        cls
        for cls in vars(state).values()
        if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == state.__name__
    )


@functools.cache
def wasmtime_errors() -> tuple[type[BaseException], ...]:
    """Return wasmtime's two unrelated exception roots, `Trap` and `WasmtimeError`."""
    import wasmtime

    return (wasmtime.Trap, wasmtime.WasmtimeError)

T = TypeVar("T")

#: bytes in one WebAssembly page
WASM_PAGE = 65536
#: a trap after memory grew to within this many bytes of the cap is reported as a memory limit
MEMORY_HEADROOM = 1 << 20


class _ErrorMap:
    """Base context manager: translate the exceptions in ``catches`` with ``translate``."""

    __slots__ = ("catches", "translate")

    def __init__(self, catches: tuple[type[BaseException], ...], translate: Callable[[BaseException], AfError]):
        self.catches = catches
        self.translate = translate

    def __enter__(self) -> _ErrorMap:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None or not isinstance(exc, self.catches):
            return False
        raise self.translate(exc) from exc


def trap_frames(trap: wasmtime.Trap) -> list[dict]:
    """Return a trap's wasm frames as plain data (func_index, func_name, module_offset).

    Args:
        trap: the wasmtime trap.

    Returns:
        One dict per frame, innermost first; empty when wasmtime gives no backtrace.
    """
    frames = trap.frames or []
    return [
        {"func_index": f.func_index, "func_name": f.func_name, "module_offset": f.module_offset} for f in frames
    ]


class WasmCallErrors(_ErrorMap):
    """Maps errors raised while calling into a sandboxed instance.

    A trap after the call grew the linear memory to within `MEMORY_HEADROOM` of the store's cap
    becomes `ResourceLimitError` AF5011 (wasmtime makes ``memory.grow`` return -1 at the cap, and
    the module then traps or spins until its fuel runs out); another out-of-fuel trap becomes
    `ResourceLimitError` AF5010; every other trap is an `AgentTrap` AF5001.

    Args:
        agent: the agent's name, for the message.
        memory_limit: the store's memory cap in bytes.
        memory_pages: returns the instance's current memory size in pages.
    """

    __slots__ = ("agent", "memory_limit", "memory_pages", "start_pages")

    def __init__(self, agent: str, memory_limit: int, memory_pages: Callable[[], int]) -> None:
        super().__init__(wasmtime_errors(), self._translate)
        self.agent = agent
        self.memory_limit = memory_limit
        self.memory_pages = memory_pages
        #: memory size when the instance was created; set by the sandbox
        self.start_pages = 0

    def _memory_exhausted(self) -> bool:
        # wasmtime does not say which grow failed nor by how much: memory that grew during the
        # call to within MEMORY_HEADROOM of the cap is taken as the cause of the trap.
        pages = self.memory_pages()
        return pages > self.start_pages and pages * WASM_PAGE + MEMORY_HEADROOM > self.memory_limit

    def _translate(self, exc: BaseException) -> AfError:
        import wasmtime

        if self._memory_exhausted():
            mb = self.memory_limit / 2**20
            return ResourceLimitError(
                f"agent `{self.agent}` reached its memory limit of {mb:g} MB",
                code="AF5011",
                hint="raise `resources.limits.memory_mb` if the network legitimately needs more memory",
                agent=self.agent,
            )
        if isinstance(exc, wasmtime.Trap) and exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            return ResourceLimitError(
                f"agent `{self.agent}` ran out of fuel",
                code="AF5010",
                hint="the module ran longer than its network's size allows; "
                "pass a larger `fuel_per_record` if it is legitimate",
                agent=self.agent,
            )
        if isinstance(exc, wasmtime.Trap):
            code_name = exc.trap_code.name.lower() if exc.trap_code is not None else None
            return AgentTrap(
                f"agent `{self.agent}` trapped: {_first_line(exc.message)}",
                code="AF5001",
                trap_code=code_name,
                frames=trap_frames(exc),
                agent=self.agent,
            )
        return InferenceError(f"agent `{self.agent}` failed in wasmtime: {_first_line(str(exc))}", code="AF5015",
                              agent=self.agent)


class OnnxCallErrors(_ErrorMap):
    """Maps onnxruntime errors raised by ``InferenceSession.run`` to `InferenceError` AF5033.

    Args:
        agent: the agent's name, for the message.
    """

    __slots__ = ("agent",)

    def __init__(self, agent: str) -> None:
        super().__init__(onnxruntime_errors(), self._translate)
        self.agent = agent

    def _translate(self, exc: BaseException) -> AfError:
        return InferenceError(
            f"onnxruntime failed for agent `{self.agent}`: {_first_line(str(exc))}",
            code="AF5033",
            agent=self.agent,
        )


def map_onnx_load_errors(member: str) -> _ErrorMap:
    """Return a context manager mapping onnxruntime session-creation errors to `BundleError` AF5043.

    Args:
        member: the bundle member being loaded, for the message.
    """

    return _bundle_error_map(onnxruntime_errors(), f"onnxruntime refuses `{member}`", "AF5043")


def map_onnx_parse_errors(member: str) -> _ErrorMap:
    """Return a context manager mapping protobuf decode errors of an ONNX model to `BundleError` AF5043.

    Args:
        member: the bundle member being parsed, for the message.
    """
    from google.protobuf.message import Error as ProtobufError  # comes with onnx

    return _bundle_error_map((ProtobufError,), f"`{member}` is not an ONNX model", "AF5043")


def map_wasm_compile_errors(member: str) -> _ErrorMap:
    """Return a context manager mapping wasmtime compile errors to `BundleError` AF5045.

    Args:
        member: the bundle member being compiled, for the message.
    """

    return _bundle_error_map(wasmtime_errors(), f"`{member}` is not a valid WebAssembly module", "AF5045")


def _bundle_error_map(errors: tuple[type[BaseException], ...], problem: str, code: str) -> _ErrorMap:
    """Map ``errors`` to a `BundleError` ``code`` reading ``<problem>: <first line of the error>``."""

    def translate(exc: BaseException) -> AfError:
        return BundleError(f"{problem}: {_first_line(str(exc))}", code=code, hint="recompile the bundle with `af compile`")

    return _ErrorMap(errors, translate)


def map_wasm_instantiate_errors(agent: str, memory_limit: int) -> _ErrorMap:
    """Return a context manager mapping instantiation failures.

    wasmtime refuses to instantiate a module whose initial memory exceeds the store's cap; that
    becomes `ResourceLimitError` AF5012. A start function (or pointer getter) that runs out of
    fuel is `ResourceLimitError` AF5010; another trap there is an `AgentTrap` AF5001.

    Args:
        agent: the agent's name.
        memory_limit: the store's memory cap in bytes.
    """

    def translate(exc: BaseException) -> AfError:
        import wasmtime

        if isinstance(exc, wasmtime.Trap) and exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            return ResourceLimitError(f"agent `{agent}` ran out of fuel while starting", code="AF5010",
                                      hint="the module's start-up code does not end; the bundle is faulty",
                                      agent=agent)
        if isinstance(exc, wasmtime.Trap):
            return AgentTrap(f"agent `{agent}` trapped while starting: {_first_line(exc.message)}",
                             code="AF5001", frames=trap_frames(exc), agent=agent)
        mb = memory_limit / 2**20
        return ResourceLimitError(
            f"agent `{agent}` cannot start within its memory limit of {mb:g} MB: {_first_line(str(exc))}",
            code="AF5012",
            hint="raise `resources.limits.memory_mb` to at least the module's initial memory",
            agent=agent,
        )

    return _ErrorMap(wasmtime_errors(), translate)


def call_or_none(fn: Callable[..., T], *args: Any) -> T | None:
    """Return ``fn(*args)``, or None when wasmtime raises: for best-effort paths (the module cache).

    Args:
        fn: a callable into wasmtime.
        args: its arguments.

    Returns:
        Its result, or None on `wasmtime.WasmtimeError`/`wasmtime.Trap`.
    """
    try:
        return fn(*args)
    except wasmtime_errors():
        return None


def _first_line(text: str) -> str:
    # wasmtime puts the cause after a multi-line backtrace ("... Caused by:\n    wasm trap: ...");
    # the diagnostic wants that one line.
    text = str(text)
    if "Caused by:" in text:
        text = text.rsplit("Caused by:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else "unknown error"
