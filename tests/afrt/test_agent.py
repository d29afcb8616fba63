"""The Agent API: `afrt.load`, `Agent.infer` on both backends, replicas, closing, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from afrt_testkit import bundle_object, make_bundle, reference_forward

import afrt
from afcore.errors import InferenceError, UsageError
from afcore.steps import Step, evaluate

SIZES = (6, 5, 4, 3)
BACKENDS = ("onnx", "wasm")


@pytest.fixture(scope="module")
def bundle():
    return make_bundle(SIZES, seed=7, max_batch=8)


@pytest.fixture(params=BACKENDS)
def agent(request, bundle, tmp_path):
    with afrt.load(bundle[0], backend=request.param, cache_dir=tmp_path) as agent:
        yield agent


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, SIZES[0])).astype(np.float32)


class TestInfer:
    @pytest.mark.parametrize("n", [1, 3, 8, 9, 20])
    def test_matches_float64_reference(self, agent, bundle, n):
        x = batch(n, seed=n)
        out = agent.infer(x)
        assert out.dtype == np.float32 and out.shape == (n, SIZES[-1])
        np.testing.assert_allclose(out, reference_forward(bundle[1], x), rtol=1e-5, atol=1e-5)

    def test_single_record(self, agent, bundle):
        x = batch(1, seed=5)[0]
        out = agent.infer(x)
        assert out.shape == (SIZES[-1],)
        np.testing.assert_allclose(out, reference_forward(bundle[1], x[None])[0], rtol=1e-5, atol=1e-5)

    def test_empty_batch(self, agent):
        assert agent.infer(np.empty((0, SIZES[0]), np.float32)).shape == (0, SIZES[-1])

    def test_non_contiguous_input_is_accepted(self, agent, bundle):
        wide = batch(6, seed=2).repeat(2, axis=0)[::2]
        assert not wide.flags.c_contiguous
        np.testing.assert_allclose(agent.infer(wide), reference_forward(bundle[1], wide), rtol=1e-5, atol=1e-5)

    def test_results_do_not_alias_backend_memory(self, agent):
        first = agent.infer(batch(2, seed=1))
        kept = first.copy()
        agent.infer(batch(2, seed=2))
        np.testing.assert_array_equal(first, kept)

    @pytest.mark.parametrize("value", [np.zeros((2, 6)), np.zeros((2, 6), np.int32), [[0.0] * 6], "x"])
    def test_wrong_dtype(self, agent, value):
        with pytest.raises(InferenceError, match="float32") as info:
            agent.infer(value)
        assert info.value.code == "AF5030"

    def test_float32_array_subclass_is_accepted(self, agent, bundle, tmp_path):
        x = batch(3, seed=9)
        mapped = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=x.shape)
        mapped[:] = x
        np.testing.assert_allclose(agent.infer(mapped), reference_forward(bundle[1], x), rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("shape", [(2, 5), (7,), (2, 6, 1), ()])
    def test_wrong_shape(self, agent, shape):
        with pytest.raises(InferenceError) as info:
            agent.infer(np.zeros(shape, np.float32))
        assert info.value.code == "AF5031"
        assert "[n, 6]" in info.value.message


@pytest.fixture(scope="module")
def agents(bundle, tmp_path_factory):
    """One agent per backend, shared by the property test: loading is not what it checks."""
    cache = tmp_path_factory.mktemp("modules")
    return {backend: afrt.load(bundle[0], backend=backend, cache_dir=cache) for backend in BACKENDS}


class TestInferProperty:
    @settings(max_examples=40, deadline=None)
    @given(n=st.integers(0, 40), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-3, 1.0, 1e3]))
    def test_any_batch_matches_the_reference_on_both_backends(self, bundle, agents, n, seed, scale):
        x = (np.random.default_rng(seed).standard_normal((n, SIZES[0])) * scale).astype(np.float32)
        ref = reference_forward(bundle[1], x)
        for agent in agents.values():
            out = agent.infer(x)
            assert out.shape == (n, SIZES[-1])
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, scale))


class TestLifecycle:
    def test_attributes(self, bundle, tmp_path):
        agent = afrt.load(bundle[0], backend="wasm", cache_dir=tmp_path)
        assert (agent.name, agent.version, agent.backend) == ("test-agent", "1.0", "wasm")
        assert (agent.input_size, agent.output_size, agent.max_batch) == (6, 3, 8)
        assert agent.digest == bundle_object(bundle[0]).digest
        assert agent.resources["limits"]["memory_mb"] == 64
        assert agent.manifest["format"] == "afb"
        assert set(agent.workflows) == {"initialization", "execution", "shutdown"}

    def test_workflows_are_step_trees(self, bundle):
        agent = afrt.load(bundle[0])
        send = agent.workflows["execution"][1]
        assert isinstance(send, Step) and send.args == {"topic": "task.completion"}
        assert evaluate(send.guard, lambda root, path: {"max": 0.9}[path[0]]) is True
        assert agent.workflows["shutdown"] == ()

    def test_closed_agent_refuses_work(self, agent):
        agent.close()
        agent.close()
        with pytest.raises(InferenceError) as info:
            agent.infer(batch(1))
        assert info.value.code == "AF5032"
        with pytest.raises(InferenceError):
            agent.replica()

    def test_replica_is_independent(self, agent, bundle):
        other = agent.replica()
        agent.close()
        x = batch(3, seed=4)
        np.testing.assert_allclose(other.infer(x), reference_forward(bundle[1], x), rtol=1e-5, atol=1e-5)
        assert other.name == agent.name and other.backend == agent.backend

    def test_onnx_replicas_share_the_session(self, bundle):
        agent = afrt.load(bundle[0], backend="onnx")
        assert agent.replica()._engine.session is agent._engine.session
        assert agent.fuel_used is None and agent.fuel_per_record is None

    @pytest.mark.parametrize("source", ["path", "bytes", "bundle", "loaded"])
    def test_load_sources(self, bundle, tmp_path, source):
        path = tmp_path / "a.afb"
        path.write_bytes(bundle[0])
        given = {
            "path": path,
            "bytes": bundle[0],
            "bundle": bundle_object(bundle[0]),
            "loaded": afrt.load_bundle(bundle[0]),
        }[source]
        assert afrt.load(given).infer(batch(1)).shape == (1, 3)


class TestOptions:
    @pytest.mark.parametrize(
        "options",
        [{"backend": "tpu"}, {"fuel_per_record": 0}, {"fuel_per_record": 1.5}, {"fuel_per_record": True},
         {"threads": 0}],
    )
    def test_bad_options_are_usage_errors(self, bundle, options):
        with pytest.raises(UsageError) as info:
            afrt.load(bundle[0], **options)
        assert info.value.code == "AF5090" and info.value.exit_code == 2

    def test_fuel_override(self, bundle, tmp_path):
        agent = afrt.load(bundle[0], backend="wasm", fuel_per_record=123_456, cache_dir=tmp_path)
        assert agent.fuel_per_record == 123_456
        agent.infer(batch(2))
        assert 0 < agent.fuel_used <= 2 * 123_456 + 10_000

    def test_threads_follow_cpu_cores(self, tmp_path):
        data, _ = make_bundle(SIZES, cpu_cores=1.5)
        agent = afrt.load(data, backend="onnx")
        assert agent._engine.session.get_session_options().intra_op_num_threads == 2
        agent = afrt.load(data, backend="onnx", threads=1)
        assert agent._engine.session.get_session_options().intra_op_num_threads == 1


@pytest.fixture(scope="module")
def example(example_bundles):
    """The compiled classification example and its weights read from the bundle's safetensors member."""
    from safetensors.numpy import load as load_safetensors

    from afcore.bundle import read_bundle

    path = example_bundles["classification-agent"]
    tensors = load_safetensors(read_bundle(path).members["weights.safetensors"])
    return path, [(tensors[f"layers.{k}.weight"], tensors[f"layers.{k}.bias"]) for k in range(4)]


class TestExampleBundle:
    """The compiled examples/classification-agent.af on both backends against float64 numpy."""

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_agrees_with_numpy(self, example, backend, tmp_path):
        path, weights = example
        agent = afrt.load(path, backend=backend, cache_dir=tmp_path)
        assert (agent.name, agent.input_size, agent.output_size) == ("classification-agent", 784, 10)
        x = np.random.default_rng(3).random((100, 784), dtype=np.float32)
        ref = reference_forward(weights, x)
        # float32 sums of 784 products: the error scales with the logits' magnitude (up to ~20 here)
        np.testing.assert_allclose(agent.infer(x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


class TestImports:
    @pytest.mark.parametrize("backend, absent", [("wasm", ("onnx", "onnxruntime")), ("onnx", ("wasmtime",))])
    def test_each_backend_imports_only_its_engine(self, bundle, tmp_path, backend, absent):
        import subprocess
        import sys

        path = tmp_path / "a.afb"
        path.write_bytes(bundle[0])
        code = (
            "import sys, afrt, numpy as np\n"
            f"agent = afrt.load({str(path)!r}, backend={backend!r}, cache_dir={str(tmp_path)!r})\n"
            "agent.infer(np.zeros((1, agent.input_size), np.float32))\n"
            f"print(sorted(m for m in {absent!r} if m in sys.modules))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"
