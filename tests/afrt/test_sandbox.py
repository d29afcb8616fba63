"""The wasm sandbox: allow-list policy, fuel, memory cap, traps that fail one call only."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import wasmtime
from afrt_testkit import (
    GROW_FOREVER,
    GROW_THEN_TRAP,
    LOOP_FOREVER,
    RETURN_STATUS_7,
    abi_module,
    make_bundle,
    random_weights,
    reference_forward,
    wasm_module,
)

import afrt
from afcore.bundle import Bundle
from afcore.errors import AgentTrap, BundleError, InferenceError, ResourceLimitError, SandboxViolation
from afrt import sandbox

N_IN, N_OUT = 4, 2
#: copies input[0] to output[0] for each record, unless input[0] < 0: then runs ``{bad}``
POISON = """(local $r i32)
 (loop $rec
  (if (f32.lt (f32.load (i32.mul (local.get $r) (i32.const 16))) (f32.const 0)) (then {bad}))
  (f32.store (i32.add (i32.const 64) (i32.mul (local.get $r) (i32.const 8)))
             (f32.load (i32.mul (local.get $r) (i32.const 16))))
  (local.set $r (i32.add (local.get $r) (i32.const 1)))
  (br_if $rec (i32.lt_u (local.get $r) (local.get $n))))
 (i32.const 0)"""


def load_module(wasm: bytes, tmp_path, *, memory_mb: float = 1, **options) -> afrt.Agent:
    data, _ = make_bundle((N_IN, N_OUT), wasm_bytes=wasm, targets=("wasm",), memory_mb=memory_mb, max_batch=4)
    return afrt.load(data, backend="wasm", cache_dir=tmp_path / "cache", **options)


def records(*firsts: float) -> np.ndarray:
    x = np.zeros((len(firsts), N_IN), dtype=np.float32)
    x[:, 0] = firsts
    return x


class TestPolicy:
    def test_policy_is_data_with_no_imports_and_no_wasi(self):
        assert sandbox.POLICY.allowed_imports == frozenset()
        assert [f.name for f in dataclasses.fields(sandbox.POLICY)] == ["allowed_imports", "exports"]
        assert set(sandbox.POLICY.exports) == {"memory", "input_ptr", "output_ptr", "max_batch", "infer"}

    @pytest.mark.parametrize(
        "imports",
        [
            '(import "env" "log" (func (param i32)))',
            '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',
            '(import "env" "g" (global i32))',
        ],
    )
    def test_any_import_is_a_sandbox_violation(self, tmp_path, imports):
        wasm = abi_module("(i32.const 0)", n_in=N_IN, n_out=N_OUT, imports=imports)
        with pytest.raises(SandboxViolation) as info:
            load_module(wasm, tmp_path)
        assert info.value.code == "AF5020"
        assert "may import nothing" in info.value.message

    def test_missing_export_breaks_the_abi(self, tmp_path):
        wasm = wasmtime.wat2wasm('(module (memory (export "memory") 1))')
        with pytest.raises(BundleError) as info:
            load_module(wasm, tmp_path)
        assert info.value.code == "AF5042"
        assert "input_ptr" in info.value.message

    def test_wrong_export_type_breaks_the_abi(self, tmp_path):
        wat = """(module (memory (export "memory") 1)
          (func (export "input_ptr") (result i32) (i32.const 0))
          (func (export "output_ptr") (result i32) (i32.const 64))
          (func (export "max_batch") (result i32) (i32.const 4))
          (func (export "infer") (param i64) (result i32) (i32.const 0)))"""
        with pytest.raises(BundleError, match="export `infer`") as info:
            load_module(wasmtime.wat2wasm(wat), tmp_path)
        assert info.value.code == "AF5042"

    def test_another_abi_version_is_refused(self, tmp_path):
        data, _ = make_bundle((6, 5, 3))
        bundle = afrt.load_bundle(data)
        manifest = {**bundle.manifest, "wasm": {**bundle.manifest["wasm"], "abi": 3}}
        with pytest.raises(BundleError, match="ABI 3") as info:
            afrt.load(Bundle(manifest=manifest, members=bundle.members, digest=bundle.digest), backend="wasm",
                      cache_dir=tmp_path)
        assert info.value.code == "AF5042"

    def test_buffers_outside_memory_are_refused(self, tmp_path):
        wat = """(module (memory (export "memory") 1)
          (func (export "input_ptr") (result i32) (i32.const 65530))
          (func (export "output_ptr") (result i32) (i32.const 0))
          (func (export "max_batch") (result i32) (i32.const 4))
          (func (export "infer") (param i32) (result i32) (i32.const 0)))"""
        with pytest.raises(BundleError, match="do not fit") as info:
            load_module(wasmtime.wat2wasm(wat), tmp_path)
        assert info.value.code == "AF5042"


class TestFuel:
    def test_endless_loop_is_stopped_by_fuel(self, tmp_path):
        agent = load_module(abi_module(LOOP_FOREVER, n_in=N_IN, n_out=N_OUT), tmp_path)
        with pytest.raises(ResourceLimitError) as info:
            agent.infer(records(1.0))
        assert info.value.code == "AF5010"
        assert "budget of" in info.value.message and "it needed more than" in info.value.message
        assert isinstance(info.value.__cause__, wasmtime.Trap)
        assert agent.fuel_used == agent.fuel_per_record + sandbox.FUEL_PER_CALL

    def test_only_the_poisoned_record_fails_and_the_replica_stays_usable(self, tmp_path):
        agent = load_module(abi_module(POISON.format(bad="(loop $l (br $l))"), n_in=N_IN, n_out=N_OUT), tmp_path)
        with pytest.raises(ResourceLimitError):
            agent.infer(records(1.0, -1.0, 3.0))
        # The swarm retries one by one: the good records pass, the bad one fails again.
        assert agent.infer(records(1.0))[0, 0] == 1.0
        with pytest.raises(ResourceLimitError):
            agent.infer(records(-1.0))
        assert agent.infer(records(3.0))[0, 0] == 3.0

    @pytest.mark.parametrize("where", ["start", "max_batch"])
    def test_endless_start_up_is_stopped_at_load(self, tmp_path, where):
        start = '(func $s (loop $l (br $l))) (start $s)' if where == "start" else ""
        getter = "(loop $l (br $l)) (i32.const 4)" if where == "max_batch" else "(i32.const 4)"
        wat = f"""(module (memory (export "memory") 1) {start}
          (func (export "input_ptr") (result i32) (i32.const 0))
          (func (export "output_ptr") (result i32) (i32.const 64))
          (func (export "max_batch") (result i32) {getter})
          (func (export "infer") (param i32) (result i32) (i32.const 0)))"""
        with pytest.raises(ResourceLimitError) as info:
            load_module(wasmtime.wat2wasm(wat), tmp_path)
        assert info.value.code == "AF5010" and "while starting" in info.value.message

    def test_budget_scales_with_the_batch(self, tmp_path):
        agent = load_module(abi_module(LOOP_FOREVER, n_in=N_IN, n_out=N_OUT), tmp_path, fuel_per_record=1000)
        with pytest.raises(ResourceLimitError):
            agent.infer(records(1.0, 2.0, 3.0))
        assert agent.fuel_used == 3 * 1000 + sandbox.FUEL_PER_CALL

    def test_default_budget_formula(self):
        layers = [(784, 128), (128, 64), (64, 32), (32, 10)]
        macs, neurons = 784 * 128 + 128 * 64 + 64 * 32 + 32 * 10, 128 + 64 + 32 + 10
        assert sandbox.fuel_per_record(layers) == (
            sandbox.FUEL_PER_MAC * macs + sandbox.FUEL_PER_NEURON * neurons + sandbox.FUEL_PER_RECORD
        )
        assert sandbox.fuel_per_record(layers) == 538_248

    def test_too_small_override_stops_a_legitimate_network(self, tmp_path):
        data, _ = make_bundle((6, 5, 4, 3))
        agent = afrt.load(data, backend="wasm", cache_dir=tmp_path, fuel_per_record=1)
        with pytest.raises(ResourceLimitError, match="ran out of fuel"):
            agent.infer(np.ones((8, 6), np.float32))


class TestMemoryLimit:
    def test_endless_growth_stops_at_the_cap(self, tmp_path):
        agent = load_module(abi_module(GROW_FOREVER, n_in=N_IN, n_out=N_OUT), tmp_path, memory_mb=2)
        with pytest.raises(ResourceLimitError) as info:
            agent.infer(records(1.0))
        assert info.value.code == "AF5011"
        assert "2 MB" in info.value.message

    def test_growth_then_trap_is_a_memory_error_not_a_trap(self, tmp_path):
        agent = load_module(abi_module(GROW_THEN_TRAP, n_in=N_IN, n_out=N_OUT), tmp_path, memory_mb=4)
        with pytest.raises(ResourceLimitError) as info:
            agent.infer(records(1.0))
        assert info.value.code == "AF5011"

    def test_memory_is_fresh_after_a_limit_error(self, tmp_path):
        bad = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"
        agent = load_module(abi_module(POISON.format(bad=bad), n_in=N_IN, n_out=N_OUT), tmp_path, memory_mb=2)
        with pytest.raises(ResourceLimitError):
            agent.infer(records(-1.0))
        assert agent.infer(records(5.0))[0, 0] == 5.0
        instance = agent._engine._last[0]
        assert instance.memory_pages() == 1  # a new instance: the grown memory went with the failed one
        assert agent._engine.pool.created == 2

    def test_views_stay_valid_when_memory_grows_within_the_cap(self, tmp_path):
        body = POISON.format(bad="").replace("(local $r i32)", "(local $r i32) (drop (memory.grow (i32.const 64)))")
        agent = load_module(abi_module(body, n_in=N_IN, n_out=N_OUT), tmp_path, memory_mb=64)
        for value in (1.0, 2.0, 3.0, 4.0, 5.0):  # +4 MiB per call: the base address must not move
            assert agent.infer(records(value))[0, 0] == value
        assert agent._engine._last[0].memory_pages() == 1 + 5 * 64

    def test_initial_memory_above_the_cap_cannot_start(self, tmp_path):
        wasm = abi_module("(i32.const 0)", n_in=N_IN, n_out=N_OUT, pages=64)  # 4 MiB
        with pytest.raises(ResourceLimitError) as info:
            load_module(wasm, tmp_path, memory_mb=1)
        assert info.value.code == "AF5012"


class TestTraps:
    def test_unreachable_is_an_agent_trap_with_frames(self, tmp_path):
        agent = load_module(abi_module(POISON.format(bad="unreachable"), n_in=N_IN, n_out=N_OUT), tmp_path)
        with pytest.raises(AgentTrap) as info:
            agent.infer(records(2.0, -2.0))
        assert info.value.code == "AF5001"
        assert info.value.trap_code == "unreachable"
        assert info.value.frames and "module_offset" in info.value.frames[0]
        assert "unreachable" in info.value.message
        assert agent.infer(records(2.0))[0, 0] == 2.0

    def test_out_of_bounds_access_is_a_trap(self, tmp_path):
        body = "(drop (i32.load (i32.const 1000000))) (i32.const 0)"
        agent = load_module(abi_module(body, n_in=N_IN, n_out=N_OUT), tmp_path)
        with pytest.raises(AgentTrap) as info:
            agent.infer(records(1.0))
        assert info.value.trap_code == "memory_out_of_bounds"

    def test_nonzero_status_is_an_inference_error(self, tmp_path):
        agent = load_module(abi_module(RETURN_STATUS_7, n_in=N_IN, n_out=N_OUT), tmp_path)
        with pytest.raises(InferenceError, match="status 7") as info:
            agent.infer(records(1.0))
        assert info.value.code == "AF5014"


class TestInstances:
    @pytest.fixture
    def weights(self):
        return random_weights((6, 5, 3), seed=3)

    @pytest.fixture
    def agent(self, weights, tmp_path):
        data, _ = make_bundle((6, 5, 3), seed=3, wasm_bytes=wasm_module(weights, max_batch=8))
        return afrt.load(data, backend="wasm", cache_dir=tmp_path)

    def test_the_public_call_gives_the_same_outputs_as_the_fast_one(self, weights, tmp_path, monkeypatch):
        from afrt import _fastcall

        data, _ = make_bundle((6, 5, 3), seed=3, wasm_bytes=wasm_module(weights, max_batch=8))
        x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
        fast = afrt.load(data, backend="wasm", cache_dir=tmp_path)
        assert isinstance(fast._engine.pool.acquire()._infer, _fastcall.FastFunc)
        _fastcall.fast_path_problem.cache_clear()
        monkeypatch.setattr(_fastcall, "_wasmtime_version", lambda: "99.0.0")
        try:
            plain = afrt.load(data, backend="wasm", cache_dir=tmp_path)
            assert isinstance(plain._engine.pool.acquire()._infer, _fastcall.PlainFunc)
            np.testing.assert_array_equal(plain.infer(x), fast.infer(x))
        finally:
            _fastcall.fast_path_problem.cache_clear()

    def test_replicas_share_the_pool_and_compute_independently(self, agent, weights):
        second = agent.replica()
        assert second._engine.pool is agent._engine.pool
        x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
        y = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
        out_x, out_y = agent.infer(x), second.infer(y)
        np.testing.assert_allclose(out_x, reference_forward(weights, x), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out_y, reference_forward(weights, y), rtol=1e-5, atol=1e-5)
        assert agent._engine.pool.created == 1  # calls one after another: one instance serves both

    def test_busy_instances_are_never_shared(self, agent):
        pool = agent._engine.pool
        held = pool.acquire()  # as if another thread were inside a call
        agent.infer(np.ones((1, 6), np.float32))
        assert pool.created == 2 and agent._engine._last[0] is not held
        pool.release(held)
        assert pool.idle == 2

    def test_threads_get_their_own_instances(self, agent, weights):
        replicas = [agent.replica() for _ in range(4)]
        inputs = [np.random.default_rng(k).standard_normal((30, 6)).astype(np.float32) for k in range(4)]
        with ThreadPoolExecutor(4) as pool:
            outputs = list(pool.map(lambda pair: pair[0].infer(pair[1]), zip(replicas, inputs)))
        for x, out in zip(inputs, outputs):
            np.testing.assert_allclose(out, reference_forward(weights, x), rtol=1e-5, atol=1e-5)
        assert agent._engine.pool.created <= 4

    def test_fuel_used_is_per_replica_and_never_another_ones(self, agent):
        second = agent.replica()
        assert agent.fuel_used is None
        agent.infer(np.ones((1, 6), np.float32))
        one = agent.fuel_used
        assert 0 < one < agent.fuel_per_record
        second.infer(np.ones((2, 6), np.float32))  # the same idle instance, now with another count
        assert agent.fuel_used is None and second.fuel_used > one

    def test_failed_instances_are_dropped_not_reused(self, tmp_path):
        agent = load_module(abi_module(POISON.format(bad="unreachable"), n_in=N_IN, n_out=N_OUT), tmp_path)
        pool = agent._engine.pool
        with pytest.raises(AgentTrap):
            agent.infer(records(-1.0))
        assert pool.idle == 0
        agent.infer(records(1.0))
        assert (pool.idle, pool.created) == (1, 2)

    def test_engine_is_shared_and_fingerprinted(self):
        assert sandbox.shared_engine() is sandbox.shared_engine()
        fingerprint = sandbox.engine_fingerprint()
        assert "wasmtime=50." in fingerprint and "consume_fuel=True" in fingerprint


class TestCompiledModulesFuel:
    """The default budget against the modules `af compile` generates (afc.lower_wasm)."""

    @pytest.mark.parametrize(
        "sizes, hidden, output",
        [
            ((784, 128, 64, 32, 10), "relu", "softmax"),
            ((2, 4, 1), "tanh", "sigmoid"),
            ((7, 5, 3), "gelu", "softmax"),
            ((100, 37, 13), "elu", "linear"),
            ((33, 65, 17), "softplus", "sigmoid"),
            ((1, 1), "linear", "linear"),
            ((16, 8), "leaky_relu", "sigmoid"),
        ],
    )
    def test_default_budget_has_margin_on_any_input(self, tmp_path, make_network, sizes, hidden, output):
        from afc.lower_wasm import lower_network

        module = lower_network(make_network(list(sizes), hidden, output))
        data, _ = make_bundle(sizes, wasm_bytes=module.wasm, targets=("wasm",), max_batch=module.max_batch)
        agent = afrt.load(data, backend="wasm", cache_dir=tmp_path)
        rng = np.random.default_rng(0)
        extreme = np.array([0.0, -0.0, 1e-45, -1e-45, 88.7, -88.7, 1e30, -1e30, np.inf, -np.inf, np.nan], np.float32)
        for n in (1, 5, module.max_batch):
            x = (rng.standard_normal((n, sizes[0])) * 30).astype(np.float32)
            x.flat[: min(x.size, extreme.size)] = extreme[: min(x.size, extreme.size)]
            agent.infer(x)
            budget = n * agent.fuel_per_record + sandbox.FUEL_PER_CALL
            assert agent.fuel_used * 1.5 < budget, (n, agent.fuel_used, budget)
