"""The numbers of learning (afcore.learning, as afc.train uses them) against independent references.

- Every activation's and loss's derivative against central finite differences of the float64
  definitions in tests/float64_reference.py (scipy's erf for gelu), not of afc's own forward code.
- The whole backward pass against finite differences of `forward64` plus a loss written here.
- SGD and Adam steps against scikit-learn's MLPClassifier/MLPRegressor from the same initial
  weights, and iRprop- against a scalar loop written from the published algorithm.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier, MLPRegressor

from afc.datasets import Dataset
from afc.spec import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS
from afc.train import TrainOptions, train_network
from afcore.learning import (
    ACTIVATIONS,
    LOSSES,
    RPROP_ETAS,
    RPROP_STEP_LIMITS,
    activate,
    activation_gradient,
    loss_and_delta,
    loss_and_gradients,
)
from float64_reference import HIDDEN, OUTPUT, forward64

#: finite-difference step in float64
H = 1e-6


def reference_loss(output: str, z: np.ndarray, t: np.ndarray) -> float:
    """The losses from their textbook definitions, on the output activation's values."""
    y = OUTPUT[output](z)
    n = len(z)
    if output == "softmax":
        return float(-np.sum(t * np.log(y)) / n)
    if output == "sigmoid":
        return float(-np.sum(t * np.log(y) + (1 - t) * np.log(1 - y)) / n)
    return float(np.sum((y - t) ** 2) / (2 * n))


def targets_for(output: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if output == "softmax":
        return np.eye(k)[rng.integers(0, k, n)]
    if output == "sigmoid":
        return rng.uniform(0, 1, (n, k))
    return rng.standard_normal((n, k))


class TestActivations:
    def test_every_hidden_activation_of_the_format_is_trainable(self):
        assert sorted(ACTIVATIONS) == sorted(HIDDEN_ACTIVATIONS)
        assert sorted(LOSSES) == sorted(OUTPUT_ACTIVATIONS)

    @pytest.mark.parametrize("name", sorted(HIDDEN_ACTIVATIONS))
    def test_forward_matches_the_float64_reference(self, name):
        z = np.linspace(-8, 8, 1601)
        # gelu's erf is a fit with a fractional error below 1.2e-7 (the float32 backends use it too)
        np.testing.assert_allclose(activate(name, z), HIDDEN[name](z), rtol=1e-6, atol=1e-7)
        z32 = z.astype(np.float32)
        assert activate(name, z32).dtype == np.float32

    @pytest.mark.parametrize("name", sorted(HIDDEN_ACTIVATIONS))
    def test_derivative_matches_central_differences(self, name):
        z = np.random.default_rng(0).uniform(-4, 4, 500)
        z = z[np.abs(z) > 1e-3]  # relu, leaky_relu and elu have a kink at 0
        numeric = (HIDDEN[name](z + H) - HIDDEN[name](z - H)) / (2 * H)
        analytic = activation_gradient(name, z, activate(name, z), np.ones_like(z))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)


class TestLosses:
    @pytest.mark.parametrize("output", sorted(OUTPUT_ACTIVATIONS))
    def test_loss_and_its_derivative_match_the_definition(self, output):
        rng = np.random.default_rng(1)
        z, t = rng.standard_normal((6, 4)) * 3, targets_for(output, 6, 4, rng)
        loss, delta = loss_and_delta(output, z.copy(), t)
        assert loss == pytest.approx(reference_loss(output, z, t), rel=1e-12)
        numeric = np.zeros_like(z)
        for index in np.ndindex(z.shape):
            up, down = z.copy(), z.copy()
            up[index] += H
            down[index] -= H
            numeric[index] = (reference_loss(output, up, t) - reference_loss(output, down, t)) / (2 * H)
        np.testing.assert_allclose(delta, numeric, rtol=1e-6, atol=1e-9)

    def test_extreme_logits_give_finite_losses(self):
        z = np.array([[1000.0, -1000.0]], dtype=np.float32)
        for output, t in (("softmax", [[0.0, 1.0]]), ("sigmoid", [[0.0, 1.0]])):
            loss, delta = loss_and_delta(output, z, np.array(t, dtype=np.float32))
            assert np.isfinite(loss) and loss == pytest.approx(2000.0 if output == "softmax" else 2000.0)
            assert np.isfinite(delta).all()


class TestBackprop:
    @pytest.mark.parametrize("hidden", sorted(HIDDEN_ACTIVATIONS))
    @pytest.mark.parametrize("output", sorted(OUTPUT_ACTIVATIONS))
    def test_every_gradient_matches_central_differences(self, make_network, hidden, output):
        network = make_network([3, 4, 3, 2], hidden, output, seed=2)
        rng = np.random.default_rng(3)
        x, t = rng.standard_normal((5, 3)), targets_for(output, 5, 2, rng)
        layers = [(layer.weight.astype(np.float64), layer.bias.astype(np.float64)) for layer in network.layers]
        _, grads = loss_and_gradients(layers, hidden, output, x, t)

        def loss_at() -> float:
            return reference_loss(output, _pre_activation(network, layers, x), t)

        for (weight, bias), (grad_w, grad_b) in zip(layers, grads):
            for array, grad in ((weight, grad_w), (bias, grad_b)):
                numeric = np.zeros_like(array)
                for index in np.ndindex(array.shape):
                    keep = array[index]
                    array[index] = keep + H
                    up = loss_at()
                    array[index] = keep - H
                    down = loss_at()
                    array[index] = keep
                    numeric[index] = (up - down) / (2 * H)
                np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def _pre_activation(network, layers, x):
    """The output layer's pre-activation, via forward64 with a linear output (independent of afc.train)."""
    from dataclasses import replace

    spec = replace(network, output_activation="linear",
                   layers=tuple(replace(layer, weight=w, bias=b) for layer, (w, b) in zip(network.layers, layers)))
    return forward64(spec, x)


SKLEARN_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}


def sklearn_after_steps(model, network, x, y, classes=None):
    """Fit ``model`` once (to build it), put ``network``'s weights in, reset its optimizer, fit again."""
    model.partial_fit(x, y, **({"classes": classes} if classes is not None else {}))
    for i, layer in enumerate(network.layers):
        model.coefs_[i][...] = layer.weight.T
        model.intercepts_[i][...] = layer.bias
    del model._optimizer  # a fresh optimizer: the next partial_fit starts from step 1
    model.partial_fit(x, y)
    return model


def af_after_steps(network, x, t, optimizer, rate, batch):
    dataset = Dataset(x.astype(np.float32), t.astype(np.float32), "test", "0" * 64)
    options = TrainOptions(epochs=1, batch_size=batch, optimizer=optimizer, learning_rate=rate, seed=0, shuffle=False)
    tensors, _ = train_network(network, dataset, options=options)
    return tensors


def assert_same_weights(tensors, model):
    for i, (coef, intercept) in enumerate(zip(model.coefs_, model.intercepts_)):
        np.testing.assert_allclose(tensors[f"layers.{i}.weight"], coef.T, rtol=0, atol=1e-6)
        np.testing.assert_allclose(tensors[f"layers.{i}.bias"], intercept, rtol=0, atol=1e-6)


class TestAgainstScikitLearn:
    """Two updates (two batches in order) from identical initial weights, alpha=0, no momentum."""

    @pytest.mark.parametrize("solver", ["sgd", "adam"])
    @pytest.mark.parametrize("activation", sorted(SKLEARN_ACTIVATIONS))
    def test_classifier_softmax_cross_entropy(self, make_network, activation, solver):
        rng = np.random.default_rng(4)
        x, y = rng.standard_normal((12, 5)), rng.integers(0, 3, 12)
        network = make_network([5, 6, 4, 3], SKLEARN_ACTIVATIONS[activation], "softmax", seed=5)
        model = MLPClassifier(hidden_layer_sizes=(6, 4), activation=activation, solver=solver, alpha=0.0, batch_size=6,
                              learning_rate_init=0.1, momentum=0.0, nesterovs_momentum=False, shuffle=False,
                              random_state=0)
        sklearn_after_steps(model, network, x, y, classes=[0, 1, 2])
        assert_same_weights(af_after_steps(network, x, np.eye(3)[y], solver, 0.1, 6), model)

    @pytest.mark.parametrize("activation", sorted(SKLEARN_ACTIVATIONS))
    def test_binary_classifier_sigmoid_cross_entropy(self, make_network, activation):
        rng = np.random.default_rng(6)
        x, y = rng.standard_normal((10, 4)), rng.integers(0, 2, 10)
        network = make_network([4, 5, 1], SKLEARN_ACTIVATIONS[activation], "sigmoid", seed=7)
        model = MLPClassifier(hidden_layer_sizes=(5,), activation=activation, solver="sgd", alpha=0.0, batch_size=5,
                              learning_rate_init=0.2, momentum=0.0, shuffle=False, random_state=0)
        sklearn_after_steps(model, network, x, y, classes=[0, 1])
        assert_same_weights(af_after_steps(network, x, y[:, None], "sgd", 0.2, 5), model)

    @pytest.mark.parametrize("activation", sorted(SKLEARN_ACTIVATIONS))
    def test_regressor_squared_error(self, make_network, activation):
        rng = np.random.default_rng(8)
        x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 2))
        network = make_network([4, 5, 3, 2], SKLEARN_ACTIVATIONS[activation], "linear", seed=9)
        model = MLPRegressor(hidden_layer_sizes=(5, 3), activation=activation, solver="sgd", alpha=0.0, batch_size=5,
                             learning_rate_init=0.05, momentum=0.0, shuffle=False, random_state=0)
        sklearn_after_steps(model, network, x, y)
        assert_same_weights(af_after_steps(network, x, y, "sgd", 0.05, 5), model)


class TestRprop:
    def test_three_full_batch_steps_match_a_scalar_irprop_minus(self, make_network):
        rng = np.random.default_rng(10)
        x, t = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
        network = make_network([3, 4, 2], "tanh", "linear", seed=11)
        dataset = Dataset(x.astype(np.float32), t.astype(np.float32), "test", "0" * 64)
        tensors, _ = train_network(network, dataset, options=TrainOptions(epochs=3, optimizer="rprop", learning_rate=0.05,
                                                                  seed=0, shuffle=False))
        # the reference: float64, one Python scalar per weight, written from Igel & Huesken's iRprop-
        layers = [[layer.weight.astype(np.float64), layer.bias.astype(np.float64)] for layer in network.layers]
        steps = [[np.full_like(p, 0.05) for p in pair] for pair in layers]
        previous = [[np.zeros_like(p) for p in pair] for pair in layers]
        for _ in range(3):
            _, grads = loss_and_gradients([tuple(p) for p in layers], "tanh", "linear", x, t)
            for i, pair in enumerate(grads):
                for j, grad in enumerate(pair):
                    for index in np.ndindex(grad.shape):
                        g, product = grad[index], grad[index] * previous[i][j][index]
                        if product > 0:
                            steps[i][j][index] = min(steps[i][j][index] * RPROP_ETAS[1], RPROP_STEP_LIMITS[1])
                        elif product < 0:
                            steps[i][j][index] = max(steps[i][j][index] * RPROP_ETAS[0], RPROP_STEP_LIMITS[0])
                            g = 0.0
                        layers[i][j][index] -= np.sign(g) * steps[i][j][index]
                        previous[i][j][index] = g
        for i, (weight, bias) in enumerate(layers):
            np.testing.assert_allclose(tensors[f"layers.{i}.weight"], weight, rtol=0, atol=1e-5)
            np.testing.assert_allclose(tensors[f"layers.{i}.bias"], bias, rtol=0, atol=1e-5)
