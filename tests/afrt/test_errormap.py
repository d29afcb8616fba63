"""The foreign-exception map: real wasmtime and onnxruntime errors in, af errors out, cause kept."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import wasmtime
from afrt_testkit import onnx_model, random_weights

from afcore.errors import AgentTrap, BundleError, InferenceError, ResourceLimitError
from afrt import _errormap
from afrt.sandbox import shared_engine


def trap_from(body: str, *, fuel: int = 10_000, pages: int = 1, grow_first: int = 0) -> wasmtime.Trap:
    store = wasmtime.Store(shared_engine())
    store.set_fuel(fuel)
    module = wasmtime.Module(shared_engine(), f'(module (memory (export "m") {pages}) (func (export "f") {body}))')
    instance = wasmtime.Instance(store, module, [])
    if grow_first:
        instance.exports(store)["m"].grow(store, grow_first)
    try:
        instance.exports(store)["f"](store)
    except wasmtime.Trap as trap:
        return trap
    raise AssertionError("no trap")


def call_map(exc: BaseException, *, pages: int = 1, start: int = 1, limit: int = 1 << 30) -> BaseException:
    errors = _errormap.WasmCallErrors("a", limit, lambda: pages)
    errors.start_pages = start
    with pytest.raises(Exception) as info:
        with errors:
            raise exc
    return info.value


class TestWasmCallErrors:
    def test_out_of_fuel(self):
        error = call_map(trap_from("(loop $l (br $l))", fuel=100))
        assert isinstance(error, ResourceLimitError) and error.code == "AF5010"
        assert isinstance(error.__cause__, wasmtime.Trap)

    def test_unreachable(self):
        error = call_map(trap_from("unreachable"))
        assert isinstance(error, AgentTrap) and error.code == "AF5001" and error.trap_code == "unreachable"
        assert error.message == "agent `a` trapped: wasm trap: wasm `unreachable` instruction executed"
        assert error.frames[0]["func_index"] == 0

    def test_integer_division_by_zero(self):
        error = call_map(trap_from("(drop (i32.div_s (i32.const 1) (i32.const 0)))"))
        assert error.trap_code == "integer_division_by_zero"

    def test_trap_after_growing_to_the_cap_is_a_memory_limit(self):
        trap = trap_from("unreachable")
        error = call_map(trap, pages=40, start=1, limit=40 * 65536 + 1000)
        assert isinstance(error, ResourceLimitError) and error.code == "AF5011"

    def test_trap_without_growth_is_not_a_memory_limit(self):
        error = call_map(trap_from("unreachable"), pages=40, start=40, limit=40 * 65536)
        assert isinstance(error, AgentTrap)

    def test_engine_error(self):
        error = call_map(_engine_error())
        assert isinstance(error, InferenceError) and error.code == "AF5015"

    def test_other_exceptions_pass_unchanged(self):
        errors = _errormap.WasmCallErrors("a", 1 << 20, lambda: 1)
        with pytest.raises(KeyError):
            with errors:
                raise KeyError("x")


def _engine_error() -> wasmtime.WasmtimeError:
    try:
        wasmtime.Module(shared_engine(), b"not wasm")
    except wasmtime.WasmtimeError as exc:
        return exc
    raise AssertionError("compiled garbage")


class TestOnnxErrors:
    def test_run_error_is_an_inference_error(self):
        model = onnx_model(random_weights((4, 3, 2))).SerializeToString()
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        with pytest.raises(InferenceError) as info:
            with _errormap.OnnxCallErrors("a"):
                session.run(None, {"input": np.zeros((1, 5), np.float32)})
        assert info.value.code == "AF5033"
        assert "\n" not in info.value.message
        assert type(info.value.__cause__).__module__.startswith("onnxruntime")

    def test_load_error_is_a_bundle_error(self):
        with pytest.raises(BundleError) as info:
            with _errormap.map_onnx_load_errors("model.onnx"):
                ort.InferenceSession(b"\x08\x01garbage", providers=["CPUExecutionProvider"])
        assert info.value.code == "AF5043"

    def test_every_onnxruntime_error_class_is_covered(self):
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        for name in ("Fail", "InvalidArgument", "InvalidGraph", "RuntimeException", "EngineError"):
            assert getattr(state, name) in _errormap.onnxruntime_errors()


class TestHelpers:
    def test_compile_error(self):
        with pytest.raises(BundleError) as info:
            with _errormap.map_wasm_compile_errors("model.wasm"):
                wasmtime.Module(shared_engine(), b"\0asm\1\0\0\0\xff")
        assert info.value.code == "AF5045" and "\n" not in info.value.message

    def test_call_or_none(self):
        assert _errormap.call_or_none(wasmtime.Module, shared_engine(), b"junk") is None
        assert _errormap.call_or_none(len, b"abc") == 3

    @pytest.mark.parametrize(
        "text, line",
        [
            ("error while executing at wasm backtrace:\n  0: f\n\nCaused by:\n    wasm trap: out of fuel\n", "wasm trap: out of fuel"),
            ("one line", "one line"),
            ("", "unknown error"),
        ],
    )
    def test_first_line(self, text, line):
        assert _errormap._first_line(text) == line
