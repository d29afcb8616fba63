"""Running a wasm module one stage at a time (the optional per-stage exports): `Agent.stages()`, the staged
backend of ``profile_layers=True``, and bundles made before those exports."""

from __future__ import annotations

import numpy as np
import pytest
import wasmtime
from afrt_testkit import make_bundle, reference_forward

import afrt
from afcore.errors import BundleError, InferenceError, ResourceLimitError, UsageError
from afrt import sandbox


@pytest.fixture(scope="module")
def digits(example_bundles):
    """The 784-128-64-32-10 example, and 20 of its input rows."""
    import orjson

    from conftest import ROOT

    rows = (ROOT / "examples" / "classification-inputs.jsonl").read_bytes().splitlines()[:20]
    x = np.array([orjson.loads(row)["input"] for row in rows], dtype=np.float32)
    return example_bundles["classification-agent"], x


def _old_bundle() -> tuple[bytes, list]:
    """A bundle whose module is ABI v1 without the per-stage exports (the testkit's hand-written module)."""
    return make_bundle((6, 5, 4, 3), targets=("wasm",))


class TestStages:
    def test_stages_in_turn_give_infers_bits_within_one_calls_fuel(self, digits):
        bundle, x = digits
        agent = afrt.load(bundle, backend="wasm")
        expected = agent.infer(x)
        stages = agent.stages()
        assert stages.count == 4 + 2  # input, 4 layers, output
        stages.load(x)
        used = []
        for index in range(stages.count):
            before = stages.fuel_used()
            stages.run(index)
            used.append(stages.fuel_used() - before)
        np.testing.assert_array_equal(stages.outputs().view(np.uint32), expected.view(np.uint32))
        budget = len(x) * agent.fuel_per_record + sandbox.FUEL_PER_CALL
        assert sum(used) <= budget
        # fuel follows the multiply-adds: 784x128 against 128x64 against 64x32 against 32x10
        assert used[1] > used[2] > used[3] > used[4]
        assert used[1] / used[2] == pytest.approx(784 * 128 / (128 * 64), rel=0.1)
        stages.load(x)
        stages.nothing()  # a call that does nothing: index past the last stage
        assert stages.fuel_used() < 100
        stages.load(x)
        stages.infer()
        assert 0 <= sum(used) - stages.fuel_used() <= 16 * stages.count  # the dispatcher's few instructions
        stages.close()
        agent.close()

    def test_the_stages_share_one_calls_fuel(self, digits):
        bundle, x = digits
        agent = afrt.load(bundle, backend="wasm", fuel_per_record=10_000)  # far less than the first layer needs
        stages = agent.stages()
        stages.load(x[:1])
        stages.run(0)  # the input stage has nothing to normalise
        with pytest.raises(ResourceLimitError) as info:
            stages.run(1)
        assert info.value.code == "AF5010"

    def test_bad_index_and_batch(self, digits):
        bundle, x = digits
        stages = afrt.load(bundle, backend="wasm").stages()
        stages.load(x[:2])
        with pytest.raises(InferenceError) as info:
            stages.run(stages.count)
        assert info.value.code == "AF5501"
        with pytest.raises(InferenceError) as info:
            stages.load(np.zeros((0, 784), dtype=np.float32))
        assert info.value.code == "AF5501"

    def test_onnx_has_no_stages(self, digits):
        with pytest.raises(UsageError) as info:
            afrt.load(digits[0], backend="onnx").stages()
        assert info.value.code == "AF5502"


class TestStagedBackend:
    @pytest.mark.parametrize("replicas", [1, 2])
    def test_profile_layers_records_every_call_with_the_same_outputs(self, digits, replicas):
        bundle, x = digits
        plain = afrt.load(bundle, backend="wasm").infer(x)
        agent = afrt.load(bundle, backend="wasm", profile_layers=True)
        agents = [agent] + [agent.replica() for _ in range(replicas - 1)]
        outs = [a.infer(x[i::replicas]) for i, a in enumerate(agents)]
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out.view(np.uint32), plain[i::replicas].view(np.uint32))
        calls = agent.staged_calls()
        assert [c.records for c in calls] == [len(x[i::replicas]) for i in range(replicas)]
        for call in calls:
            assert len(call.stages) == 6
            starts = [start for start, _, _ in call.stages]
            assert starts == sorted(starts) and all(start <= end for start, end, _ in call.stages)
        # the fuel the runner reads after the call is the stages' together
        assert agents[-1].fuel_used == sum(fuel for _, _, fuel in calls[-1].stages)
        agent.close()
        assert len(agent.staged_calls()) == replicas  # still there once closed (af profile reads them after the run)

    def test_plain_load_records_nothing(self, digits):
        agent = afrt.load(digits[0], backend="wasm")
        agent.infer(digits[1])
        assert agent.staged_calls() == []


class TestOldBundles:
    """A module without the per-stage exports (ABI v1 does not require them) still runs everywhere."""

    def test_it_runs_and_says_why_it_has_no_stages(self):
        data, weights = _old_bundle()
        x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
        agent = afrt.load(data, backend="wasm")
        np.testing.assert_allclose(agent.infer(x), reference_forward(weights, x), rtol=1e-5, atol=1e-5)
        with pytest.raises(BundleError) as info:
            agent.stages()
        assert info.value.code == "AF5500"
        assert "no per-stage exports" in info.value.message and "recompile" in info.value.message

    def test_profile_layers_runs_it_whole_with_a_notice(self):
        data, weights = _old_bundle()
        x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
        agent = afrt.load(data, backend="wasm", profile_layers=True)
        np.testing.assert_allclose(agent.infer(x), reference_forward(weights, x), rtol=1e-5, atol=1e-5)
        assert agent.staged_calls() == []
        assert any("per-layer time is not available" in notice for notice in agent.notices)

    def test_a_stage_count_that_disagrees_with_the_manifest(self):
        data, _ = make_bundle((6, 5, 4, 3), targets=("wasm",), wasm_bytes=_with_stage_exports(
            '(func (export "stage_count") (result i32) (i32.const 3))'
            '(func (export "stage") (param i32 i32) (result i32) (i32.const 0))'), max_batch=4)
        with pytest.raises(BundleError) as info:
            afrt.load(data, backend="wasm").stages()
        assert info.value.code == "AF5500" and "stage_count is 3, expected 5" in info.value.message

    def test_a_stage_export_of_another_type(self):
        data, _ = make_bundle((6, 5, 4, 3), targets=("wasm",), wasm_bytes=_with_stage_exports(
            '(func (export "stage_count") (result i32) (i32.const 5))'
            '(func (export "stage") (param i64) (result i32) (i32.const 0))'), max_batch=4)
        agent = afrt.load(data, backend="wasm")  # it loads: the exports are optional
        with pytest.raises(BundleError, match="export `stage`") as info:
            agent.stages()
        assert info.value.code == "AF5500"


def _with_stage_exports(funcs: str) -> bytes:
    """An ABI v1 module (6 in, 3 out, max_batch 4) that does nothing, with the given extra functions."""
    return wasmtime.wat2wasm(f"""(module (memory (export "memory") 1)
      (func (export "input_ptr") (result i32) (i32.const 0))
      (func (export "output_ptr") (result i32) (i32.const 1024))
      (func (export "max_batch") (result i32) (i32.const 4))
      (func (export "infer") (param i32) (result i32) (i32.const 0))
      {funcs})""")
