"""`Agent.weights` / `Agent.set_weights` on both backends, against an independent float64 numpy forward pass
and onnx's own reading of the model; ABI v1 bundles keep running with read-only weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from afrt_testkit import make_bundle
from onnx import numpy_helper

import afrt
from afcore.errors import BundleError, InferenceError, UsageError
from afrt.weights import pack_blocked, unpack_blocked

BACKENDS = ("onnx", "wasm")
#: example -> (hidden activation, output activation), as the .af files declare
EXAMPLES = {"xor": ("tanh", "sigmoid"), "classification-agent": ("relu", "linear")}
_F64 = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "linear": lambda z: z}


def numpy_forward(layers, hidden: str, output: str, x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for k, (w, b) in enumerate(layers):
        h = h @ w.astype(np.float64).T + b.astype(np.float64)
        h = _F64[output if k == len(layers) - 1 else hidden](h)
    return h


def random_layers(shapes, seed: int):
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32), rng.standard_normal(o).astype(np.float32))
            for i, o in shapes]


@pytest.fixture(params=[(name, backend) for name in EXAMPLES for backend in BACKENDS], ids=lambda p: "-".join(p))
def loaded(request, example_bundles, tmp_path):
    name, backend = request.param
    with afrt.load(example_bundles[name], backend=backend, cache_dir=tmp_path) as agent:
        yield name, agent


class TestRead:
    def test_weights_are_the_models_initializers(self, loaded, example_bundles):
        name, agent = loaded
        model = onnx.load_model_from_string(afrt.load_bundle(example_bundles[name]).member("onnx"))
        found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        layers = agent.weights()
        assert len(layers) == len(agent.bundle.layers)
        for k, (w, b) in enumerate(layers):
            assert w.dtype == np.float32 and b.dtype == np.float32 and w.flags.c_contiguous
            np.testing.assert_array_equal(w, found[f"layers.{k}.weight"])
            np.testing.assert_array_equal(b, found[f"layers.{k}.bias"])

    def test_weights_returns_copies(self, loaded):
        _, agent = loaded
        agent.weights()[0][0][:] = 1e6
        assert np.abs(agent.weights()[0][0]).max() < 1e6


class TestReplace:
    def test_new_weights_match_numpy_forward_on_every_replica(self, loaded):
        name, agent = loaded
        hidden, output = EXAMPLES[name]
        before = agent.replica()
        new = random_layers(agent.bundle.layers, seed=3)
        x = np.random.default_rng(4).random((9, agent.input_size)).astype(np.float32)
        old_out = agent.infer(x)
        agent.set_weights(new)
        after = agent.replica()
        want = numpy_forward(new, hidden, output, x)
        assert np.abs(old_out - want).max() > 1e-3  # the change is visible, not a coincidence
        for replica in (agent, before, after):
            np.testing.assert_allclose(replica.infer(x), want, rtol=1e-4, atol=1e-5)
        for (w, b), (nw, nb) in zip(after.weights(), new):
            np.testing.assert_array_equal(w, nw)
            np.testing.assert_array_equal(b, nb)
        assert agent.weights_generation == before.weights_generation == after.weights_generation == 1

    def test_caller_arrays_are_copied(self, loaded):
        _, agent = loaded
        new = random_layers(agent.bundle.layers, seed=5)
        x = np.ones((1, agent.input_size), np.float32)
        agent.set_weights(new)
        out = agent.infer(x)
        new[0][0][:] = 0
        np.testing.assert_array_equal(agent.infer(x), out)

    def test_wasm_instances_made_later_and_busy_ones_get_the_weights(self, example_bundles, tmp_path):
        agent = afrt.load(example_bundles["xor"], backend="wasm", cache_dir=tmp_path)
        pool = agent._engine.pool
        busy = pool.acquire()  # an instance in a call while the weights change
        new = random_layers(agent.bundle.layers, seed=6)
        agent.set_weights(new)
        pool.release(busy)
        fresh = [pool.acquire() for _ in range(3)]  # the released one, and two made after the change
        assert pool.created >= 3
        x = np.array([[0, 1]], np.float32)
        want = numpy_forward(new, "tanh", "sigmoid", x)
        for instance in fresh:
            np.testing.assert_allclose(instance.run(x), want, rtol=1e-5, atol=1e-6)

    def test_both_backends_agree_after_the_same_replacement(self, example_bundles, tmp_path):
        new = random_layers(afrt.load_bundle(example_bundles["classification-agent"]).layers, seed=8)
        x = np.random.default_rng(9).random((5, 784)).astype(np.float32)
        outs = []
        for backend in BACKENDS:
            agent = afrt.load(example_bundles["classification-agent"], backend=backend, cache_dir=tmp_path)
            agent.set_weights(new)
            outs.append(agent.infer(x))
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


class TestRefusals:
    def test_wrong_shapes(self, loaded):
        _, agent = loaded
        good = agent.weights()
        for bad in (good[:-1], [(good[0][0].T, good[0][1])] + good[1:], [(good[0][0], good[0][1][:-1])] + good[1:],
                    "weights", [(1, 2, 3)]):
            with pytest.raises(UsageError) as info:
                agent.set_weights(bad)
            assert info.value.code == "AF6100"
        assert agent.weights_generation == 0

    def test_not_finite(self, loaded):
        _, agent = loaded
        layers = agent.weights()
        layers[-1][1][0] = np.nan
        with pytest.raises(UsageError) as info:
            agent.set_weights(layers)
        assert info.value.code == "AF6103"

    def test_abi_v1_bundle_runs_with_read_only_weights(self, tmp_path):
        data, weights = make_bundle((6, 5, 3), seed=2)  # its wasm module is a hand-written ABI v1 one
        agent = afrt.load(data, backend="wasm", cache_dir=tmp_path)
        assert agent.infer(np.zeros((1, 6), np.float32)).shape == (1, 3)
        for call in (agent.weights, lambda: agent.set_weights(weights)):
            with pytest.raises(BundleError) as info:
                call()
            assert info.value.code == "AF6101"

    def test_onnx_model_without_layer_initializers(self, tmp_path):
        data, weights = make_bundle((6, 5, 3), seed=2)  # initializers named w0, b0, ...
        agent = afrt.load(data, backend="onnx")
        with pytest.raises(BundleError) as info:
            agent.set_weights(weights)
        assert info.value.code == "AF6102"

    def test_closed_agent(self, example_bundles):
        agent = afrt.load(example_bundles["xor"])
        layers = agent.weights()
        agent.close()
        with pytest.raises(InferenceError) as info:
            agent.set_weights(layers)
        assert info.value.code == "AF5032"


@pytest.mark.parametrize("n_out,n_in", [(1, 1), (4, 3), (5, 2), (10, 32), (7, 7)])
def test_blocked_layout_round_trip(n_out, n_in):
    rng = np.random.default_rng(n_out * n_in)
    w, b = rng.standard_normal((n_out, n_in)).astype(np.float32), rng.standard_normal(n_out).astype(np.float32)
    packed = pack_blocked(w, b)
    blocks = -(-n_out // 4)
    assert packed.size == blocks * n_in * 4 + blocks * 4
    assert packed[4 * 0 + 1 if n_out > 1 else 0] == (w[1, 0] if n_out > 1 else w[0, 0])  # lane o of input 0
    back_w, back_b = unpack_blocked(packed, n_out, n_in)
    np.testing.assert_array_equal(back_w, w)
    np.testing.assert_array_equal(back_b, b)


class TestLeanLoading:
    """`af run` loads lean: an ONNX model over LARGE_MEMBER_BYTES is read by onnxruntime from a private
    file. Changing the weights makes the session again from that file, so it must outlive loading."""

    def test_set_weights_after_the_model_was_spilled_to_a_file(self, example_bundles, monkeypatch):
        import afrt.agent

        monkeypatch.setattr(afrt.agent, "LARGE_MEMBER_BYTES", 0)  # spill even the xor model
        with afrt.load(example_bundles["xor"], backend="onnx", lean=True) as agent:
            spilled = agent._engine.backing_file.path
            layers = random_layers([(w.shape[1], w.shape[0]) for w, _ in agent.weights()], seed=3)
            agent.set_weights(layers)
            x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
            np.testing.assert_allclose(agent.infer(x), numpy_forward(layers, "tanh", "sigmoid", x), atol=1e-6)
            for (w, b), (w2, b2) in zip(agent.weights(), layers):
                np.testing.assert_array_equal(w, w2)
                np.testing.assert_array_equal(b, b2)
        del agent
        import gc

        gc.collect()
        assert not Path(spilled).exists()


class TestLearningAgentsFeedTheirWeights:
    def test_set_weights_feeds_the_new_weights_to_the_same_session(self, tmp_path):
        from learning_kit import learning_bundle

        bundle = learning_bundle(tmp_path, (5, 4, 3), activation="tanh", output="softmax")
        with afrt.load(bundle, backend="onnx") as agent:
            session = agent._engine.session
            assert agent._engine.weight_inputs == {f"layers.{k}.{p}" for k in (0, 1) for p in ("weight", "bias")}
            layers = random_layers([(5, 4), (4, 3)], seed=9)
            agent.set_weights(layers)
            assert agent._engine.session is session  # no new session: the weights are fed
            x = np.random.default_rng(1).random((7, 5), dtype=np.float32)
            expected = numpy_forward(layers, "tanh", "linear", x)
            expected = np.exp(expected - expected.max(axis=1, keepdims=True))
            np.testing.assert_allclose(agent.infer(x), expected / expected.sum(axis=1, keepdims=True), atol=1e-6)
            layers[0][0][:] = 0  # the caller's arrays are copied: changing them changes nothing
            np.testing.assert_allclose(agent.infer(x), expected / expected.sum(axis=1, keepdims=True), atol=1e-6)
