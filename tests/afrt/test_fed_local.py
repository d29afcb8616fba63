"""A participant's local side: FedProx's proximal term, DP clipping and noise, attacks, data checks."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from afcore.errors import UsageError
from afrt.federated import local

NET = local.Network((3, 4, 2), "tanh", "softmax")


def _data(n: int = 16, seed: int = 0) -> local.LocalData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return local.LocalData(x, np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)])


def _loss(flat: np.ndarray, data: local.LocalData) -> float:
    z = data.inputs.astype(np.float64)
    layers = local.unflatten(flat.astype(np.float64), NET)
    h = np.tanh(z @ layers[0][0].T + layers[0][1])
    o = h @ layers[1][0].T + layers[1][1]
    o -= o.max(axis=1, keepdims=True)
    logp = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
    return float(-(data.targets * logp).sum() / len(o))


class TestTraining:
    def test_one_full_batch_step_is_sgd_on_loss_plus_proximal_term(self):
        # one step with batch = all records: w1 = w0 - lr * (grad f(w0) + mu (w0 - g)), with the
        # gradient taken by central differences in float64 as the reference
        data, rng = _data(), np.random.default_rng(1)
        anchor = rng.normal(size=NET.size).astype(np.float32)
        start = anchor.copy()  # FedProx starts from the global model: the proximal gradient is 0 ...
        w1, _ = local.train_local(start, NET, data, epochs=1, learning_rate=0.1, mu=0.5, batch_size=len(data))
        eps, grad = 1e-6, np.zeros(NET.size)
        for i in range(NET.size):
            e = np.zeros(NET.size)
            e[i] = eps
            grad[i] = (_loss(anchor + e, data) - _loss(anchor - e, data)) / (2 * eps)
        np.testing.assert_allclose(w1, anchor - 0.1 * grad, atol=1e-5)
        # ... and at the second step it pulls toward the global model: compare two epochs with and without mu
        plain, _ = local.train_local(start, NET, data, epochs=2, learning_rate=0.1, mu=0.0, batch_size=len(data))
        prox, _ = local.train_local(start, NET, data, epochs=2, learning_rate=0.1, mu=0.5, batch_size=len(data))
        w1_grad = np.zeros(NET.size)
        for i in range(NET.size):
            e = np.zeros(NET.size)
            e[i] = eps
            w1_grad[i] = (_loss(w1 + e, data) - _loss(w1 - e, data)) / (2 * eps)
        np.testing.assert_allclose(prox, w1 - 0.1 * (w1_grad + 0.5 * (w1 - anchor)), atol=1e-5)
        assert np.linalg.norm(prox - anchor) < np.linalg.norm(plain - anchor)


class TestPrivacyAndAttacks:
    def test_clip_and_noise(self):
        g = np.zeros(1000, np.float32)
        w = np.full(1000, 1.0, np.float32)  # update norm ~31.6
        clipped = local.clip_and_noise(g, w, clip=2.0, noise=0.0, rng=np.random.default_rng(0))
        assert np.linalg.norm(clipped) == pytest.approx(2.0, rel=1e-5)
        noisy = local.clip_and_noise(g, w, clip=2.0, noise=0.5, rng=np.random.default_rng(0))
        assert np.std(noisy - clipped) == pytest.approx(1.0, rel=0.1)  # sigma * C
        small = np.full(1000, 0.01, np.float32)
        np.testing.assert_allclose(local.clip_and_noise(g, small, clip=2.0, noise=0.0, rng=np.random.default_rng(0)),
                                   small, rtol=1e-6)

    def test_attacks(self):
        rng = np.random.default_rng(0)
        g, w = np.ones(5, np.float32), np.full(5, 2.0, np.float32)
        np.testing.assert_allclose(local.apply_attack("sign-flip", g, w, rng), g - local.SIGN_FLIP_SCALE * (w - g))
        assert not np.allclose(local.apply_attack("gaussian", g, w, rng), w)
        np.testing.assert_array_equal(local.apply_attack(None, g, w, rng), w)
        data = _data()
        np.testing.assert_array_equal(local.flip_labels(data).targets.argmax(1), 1 - data.targets.argmax(1))


class TestData:
    def test_class_indices_become_one_hot(self, tmp_path):
        path = tmp_path / "d.safetensors"
        save_file({"inputs": np.zeros((4, 3), np.float32), "targets": np.array([0, 1, 1, 0], np.float32)}, str(path))
        data = local.load_local_data(path, NET)
        np.testing.assert_array_equal(data.targets, np.eye(2, dtype=np.float32)[[0, 1, 1, 0]])

    @pytest.mark.parametrize("tensors", [{"inputs": np.zeros((4, 5), np.float32), "targets": np.zeros(4, np.float32)},
                                         {"inputs": np.zeros((4, 3), np.float32)},
                                         {"inputs": np.zeros((4, 3), np.float32), "targets": np.full(4, 7.0, np.float32)}])
    def test_refusals(self, tmp_path, tensors):
        path = tmp_path / "d.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(UsageError) as caught:
            local.load_local_data(path, NET)
        assert caught.value.code == "AF6170"
