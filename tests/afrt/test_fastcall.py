"""afrt._fastcall: FastFunc against wasmtime's own Func.__call__, traps, fuel, and memory views."""

from __future__ import annotations

import numpy as np
import pytest
import wasmtime

from afcore.errors import InternalError
from afrt import _fastcall
from afrt._fastcall import FastFunc, PlainFunc, fast_func, memory_view

WAT = """
(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "mix") (param i32 i32 i32) (result i32)
    (i32.sub (i32.mul (local.get 0) (local.get 1)) (local.get 2)))
  (func (export "answer") (result i32) (i32.const 42))
  (func (export "nop"))
  (func (export "spin") (param $n i32) (result i32)
    (loop $l (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 7))
  (func (export "boom") (param i32) (result i32) unreachable)
  (func (export "peek") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "float") (param f32) (result f32) (local.get 0)))
"""


def _instance(fuel: int | None = None) -> tuple[wasmtime.Store, dict]:
    config = wasmtime.Config()
    config.consume_fuel = fuel is not None
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    if fuel is not None:
        store.set_fuel(fuel)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wasmtime.wat2wasm(WAT)), [])
    return store, instance.exports(store)


class TestFastFunc:
    @pytest.mark.parametrize(
        "name,args",
        [("add", (2, 3)), ("add", (2**31 - 1, 1)), ("add", (-5, -7)), ("mix", (7, -3, 11)),
         ("mix", (65536, 65536, 1)), ("answer", ()), ("spin", (100,))],
    )
    def test_same_result_as_func_call(self, name, args):
        store, exports = _instance()
        assert FastFunc(store, exports[name])(*args) == exports[name](store, *args)

    def test_many_calls_reuse_the_argument_slots(self):
        store, exports = _instance()
        add = FastFunc(store, exports["add"])
        rng = np.random.default_rng(0)
        for a, b in rng.integers(-(2**30), 2**30, size=(200, 2)).tolist():
            assert add(a, b) == exports["add"](store, a, b)

    def test_no_result_returns_none(self):
        store, exports = _instance()
        assert FastFunc(store, exports["nop"])() is None

    def test_trap_raises_wasmtime_trap_and_the_func_stays_usable(self):
        store, exports = _instance()
        boom, add = FastFunc(store, exports["boom"]), FastFunc(store, exports["add"])
        with pytest.raises(wasmtime.Trap) as info:
            boom(1)
        assert info.value.trap_code == wasmtime.TrapCode.UNREACHABLE
        assert add(1, 2) == 3
        with pytest.raises(wasmtime.Trap):
            boom(2)

    def test_out_of_bounds_access_traps(self):
        store, exports = _instance()
        with pytest.raises(wasmtime.Trap) as info:
            FastFunc(store, exports["peek"])(70000)
        assert info.value.trap_code == wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS

    def test_out_of_fuel_is_a_trap_and_refuel_resumes(self):
        store, exports = _instance(fuel=1000)
        spin = FastFunc(store, exports["spin"])
        assert spin(10) == 7
        assert store.get_fuel() < 1000
        with pytest.raises(wasmtime.Trap) as info:
            spin(1_000_000)
        assert info.value.trap_code == wasmtime.TrapCode.OUT_OF_FUEL
        store.set_fuel(10**7)
        assert spin(10) == 7

    def test_refuses_non_i32_signatures(self):
        store, exports = _instance()
        with pytest.raises(InternalError, match="i32-only"):
            FastFunc(store, exports["float"])

    def test_wrong_argument_count(self):
        store, exports = _instance()
        with pytest.raises(InternalError, match="expected 2 arguments"):
            FastFunc(store, exports["add"])(1)


class TestMemoryView:
    def test_view_aliases_linear_memory(self):
        store, exports = _instance()
        memory = exports["memory"]
        view = memory_view(store, memory, 64, 4, np.int32)
        view[:] = [11, 22, 33, 44]
        assert FastFunc(store, exports["peek"])(68) == 22
        assert bytes(memory.read(store, 64, 72)) == np.array([11, 22], dtype="<i4").tobytes()

    def test_float32_default(self):
        store, exports = _instance()
        view = memory_view(store, exports["memory"], 0, 8)
        assert view.dtype == np.float32 and view.shape == (8,)

    def test_range_outside_memory_is_refused(self):
        store, exports = _instance()
        with pytest.raises(InternalError, match="exceeds"):
            memory_view(store, exports["memory"], 65536 - 8, 4)


class TestBindingsGuard:
    def test_changed_bindings_raise_a_clear_error(self, monkeypatch):
        from wasmtime import _bindings

        monkeypatch.delattr(_bindings, "_wasmtime_func_call_unchecked")
        store, exports = _instance()
        with pytest.raises(InternalError, match="private bindings") as info:
            FastFunc(store, exports["add"])
        assert "public call" in info.value.hint

    def test_call_after_the_store_is_closed_is_refused(self):
        store, exports = _instance()
        add = FastFunc(store, exports["add"])
        store.close()
        with pytest.raises(InternalError, match="closed"):
            add(1, 2)


CASES = [("add", (2, 3)), ("add", (2**31 - 1, 1)), ("mix", (7, -3, 11)), ("answer", ()), ("nop", ()), ("spin", (100,))]


class TestFallback:
    """`fast_func` uses the private call only on a tested wasmtime-py with every binding present."""

    @pytest.fixture
    def forced(self, monkeypatch):
        """Make the private bindings look changed, as another wasmtime-py would."""
        from wasmtime import _bindings

        _fastcall.fast_path_problem.cache_clear()
        monkeypatch.delattr(_bindings, "_wasmtime_func_call_unchecked")
        yield
        _fastcall.fast_path_problem.cache_clear()

    def test_the_fast_path_is_taken_on_this_wasmtime(self):
        store, exports = _instance()
        assert _fastcall.fast_path_problem() is None
        assert isinstance(fast_func(store, exports["add"]), FastFunc)

    @pytest.mark.parametrize("name,args", CASES)
    def test_changed_bindings_fall_back_with_equal_results(self, monkeypatch, name, args):
        from wasmtime import _bindings

        store, exports = _instance()
        fast = FastFunc(store, exports[name])(*args)
        _fastcall.fast_path_problem.cache_clear()
        monkeypatch.delattr(_bindings, "_wasmtime_func_call_unchecked")
        try:
            store, exports = _instance()
            plain = fast_func(store, exports[name])
            assert isinstance(plain, PlainFunc)
            assert plain(*args) == fast == _expected(name, args)
        finally:
            _fastcall.fast_path_problem.cache_clear()

    def test_an_untested_version_falls_back(self, monkeypatch):
        _fastcall.fast_path_problem.cache_clear()
        monkeypatch.setattr(_fastcall, "_wasmtime_version", lambda: "51.0.0")
        try:
            assert "51.0.0" in _fastcall.fast_path_problem()
            store, exports = _instance()
            assert isinstance(fast_func(store, exports["add"]), PlainFunc)
        finally:
            _fastcall.fast_path_problem.cache_clear()

    def test_fallback_traps_and_runs_out_of_fuel_like_the_fast_path(self, forced):
        store, exports = _instance()
        with pytest.raises(wasmtime.Trap):
            fast_func(store, exports["boom"])(1)
        store, exports = _instance(fuel=50)
        with pytest.raises(wasmtime.Trap):
            fast_func(store, exports["spin"])(10_000)


def _expected(name: str, args: tuple) -> object:
    """The result of ``Func.__call__`` in a fresh instance."""
    store, exports = _instance()
    return exports[name](store, *args)
