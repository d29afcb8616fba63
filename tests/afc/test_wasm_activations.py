"""Every activation of the WebAssembly backend against numpy/scipy float64, over the whole float32 domain.

The harness is a real lowered module: a 1-1 network whose layers have weight 1 and bias 0, so its output is
``activation(x)`` element by element (``0 + 1*x`` is exact; it only turns -0 into +0). Tolerance: 2e-6
relative to the float64 reference, with an absolute floor of 1.2e-38 (FLT_MIN) because a result that is
subnormal in float32 cannot carry 2e-6 relative precision. NaN must map to NaN and nothing else may.
"""

from __future__ import annotations

import numpy as np
import pytest
import wasmtime
from scipy.special import erfc

from afc.lower_wasm import lower_network
from afc.spec import LayerSpec, NetworkSpec

#: relative tolerance of every activation
REL = 2e-6
#: absolute floor, for results that are subnormal in float32
FLOOR = 1.2e-38
#: the batch of the harness modules, so that a sweep takes few calls
HARNESS_BATCH = 1 << 16

EDGES = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1.1754944e-38, 5.9e-39, -5.9e-39, 1e-30, -1e-30,
     1e-7, -1e-7, 0.35, -0.35, 0.3499999, -0.3500001, 0.5, -0.5, 1.0, -1.0, 9.0, -9.0, 13.3, -13.3, 15.0, -15.0,
     20.0, -20.0, 87.33, -87.33, 88.0, -88.0, 88.7, -88.7, 88.72283, -88.72283, 88.7229, -88.7229, 89.0, -89.0,
     103.97, -103.97, 104.0, -104.0, 1e10, -1e10, 3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan],
    dtype=np.float32,
)


def _sweep() -> np.ndarray:
    """About 2.8 million float32 points: log-spaced magnitudes, random bit patterns and a fine grid, both signs."""
    rng = np.random.default_rng(2024)
    magnitudes = np.logspace(np.log10(1.4e-45), np.log10(3.4e38), 600_000)
    patterns = rng.integers(0, 0x7F800000, 500_000, dtype=np.uint32).view(np.float32)
    positive = np.concatenate([magnitudes.astype(np.float32), patterns])
    grid = np.linspace(-25.0, 25.0, 200_001).astype(np.float32)
    return np.concatenate([positive, -positive, grid, EDGES])


SWEEP = _sweep()


def _erf_gelu(x: np.ndarray) -> np.ndarray:
    # x * Phi(x) written with erfc so that the negative tail keeps its relative precision; -inf -> its limit 0
    return np.where(np.isneginf(x), 0.0, 0.5 * x * erfc(-x / np.sqrt(2.0)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x)))


REFERENCES = {
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "linear": lambda x: x,
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "gelu": _erf_gelu,
    "softplus": lambda x: np.logaddexp(0.0, x),
}


class Harness:
    """A lowered network in a wasmtime instance, run on float32 arrays of any length."""

    def __init__(self, network: NetworkSpec, *, max_batch: int = HARNESS_BATCH) -> None:
        module = lower_network(network, max_batch=max_batch)
        self.store = wasmtime.Store()
        instance = wasmtime.Instance(self.store, wasmtime.Module(self.store.engine, module.wasm), [])
        exports = instance.exports(self.store)
        self.infer = exports["infer"]
        self.memory = np.frombuffer(exports["memory"].get_buffer_ptr(self.store), dtype=np.uint8)
        self.input_ptr = exports["input_ptr"](self.store)
        self.output_ptr = exports["output_ptr"](self.store)
        self.max_batch = max_batch
        self.n_in, self.n_out = network.input_size, network.output_size

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.n_in)
        out = np.empty((len(x), self.n_out), dtype=np.float32)
        for start in range(0, len(x), self.max_batch):
            chunk = x[start : start + self.max_batch]
            self.memory[self.input_ptr : self.input_ptr + chunk.nbytes] = chunk.view(np.uint8).ravel()
            assert self.infer(self.store, len(chunk)) == 0
            end = self.output_ptr + len(chunk) * self.n_out * 4
            out[start : start + len(chunk)] = self.memory[self.output_ptr : end].view(np.float32).reshape(len(chunk), -1)
        return out


def _identity(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.eye(n, dtype=np.float32), np.zeros(n, dtype=np.float32)


def hidden_harness(activation: str) -> Harness:
    """A 1-1-1 network: ``activation(x)`` through a hidden layer, then a linear identity output layer."""
    w, b = _identity(1)
    layers = (LayerSpec(0, w, b, activation), LayerSpec(1, w, b, "linear"))
    return Harness(NetworkSpec(1, 1, layers, hidden_activation=activation, output_activation="linear"))


def output_harness(activation: str, width: int = 1, max_batch: int = HARNESS_BATCH) -> Harness:
    """A single identity output layer of ``width`` with ``activation``."""
    w, b = _identity(width)
    layer = LayerSpec(0, w, b, activation)
    return Harness(NetworkSpec(width, width, (layer,), hidden_activation="relu", output_activation=activation),
                   max_batch=max_batch)


def assert_close(got: np.ndarray, x: np.ndarray, reference: np.ndarray) -> None:
    """Assert |got - ref| <= REL*|ref| + FLOOR, identical NaN positions and exact infinities."""
    got = got.astype(np.float64).ravel()
    reference = np.asarray(reference, dtype=np.float64).ravel()
    x = x.ravel()
    nan_got, nan_ref = np.isnan(got), np.isnan(reference)
    assert np.array_equal(nan_got, nan_ref), f"NaN mismatch at x={x[nan_got != nan_ref][:5]}"
    ok = ~nan_ref
    with np.errstate(invalid="ignore"):
        err = np.where(got[ok] == reference[ok], 0.0, np.abs(got[ok] - reference[ok]))
    bad = err > REL * np.abs(reference[ok]) + FLOOR
    assert not bad.any(), (
        f"{bad.sum()} points out of tolerance, e.g. x={x[ok][bad][:3]} got={got[ok][bad][:3]} "
        f"ref={reference[ok][bad][:3]}"
    )


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def hidden(request) -> tuple[str, Harness]:
    return request.param, hidden_harness(request.param)


class TestHiddenActivations:
    def test_dense_sweep_of_the_float32_domain(self, hidden):
        name, run = hidden
        with np.errstate(all="ignore"):
            reference = REFERENCES[name](SWEEP.astype(np.float64))
        assert_close(run(SWEEP), SWEEP, reference)

    def test_nan_in_nan_out(self, hidden):
        _, run = hidden
        assert np.isnan(run(np.array([np.nan, -np.nan], dtype=np.float32))).all()

    def test_zero_and_denormals(self, hidden):
        name, run = hidden
        x = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.1754942e-38], dtype=np.float32)
        assert_close(run(x), x, REFERENCES[name](x.astype(np.float64)))


class TestActivationLimits:
    @pytest.mark.parametrize(
        "name,x,expected",
        [
            ("sigmoid", np.inf, 1.0), ("sigmoid", -np.inf, 0.0), ("sigmoid", 0.0, 0.5),
            ("tanh", np.inf, 1.0), ("tanh", -np.inf, -1.0), ("tanh", 1e30, 1.0),
            ("elu", -np.inf, -1.0), ("elu", np.inf, np.inf), ("softplus", np.inf, np.inf),
            ("softplus", -np.inf, 0.0), ("softplus", 3.4028235e38, 3.4028235e38),
            ("gelu", np.inf, np.inf), ("gelu", -np.inf, 0.0), ("relu", -np.inf, 0.0),
            ("leaky_relu", -np.inf, -np.inf),
        ],
    )
    def test_limit(self, name, x, expected):
        got = hidden_harness(name)(np.array([x], dtype=np.float32))[0, 0]
        assert got == np.float32(expected)

    @pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu", "gelu", "softplus"])
    def test_no_overflow_near_exp_limits(self, name):
        x = np.array([88.7, -88.7, 88.72283, -88.72283, 89.0, -89.0, 104.0, -104.0], dtype=np.float32)
        got = hidden_harness(name)(x).ravel()
        assert np.isfinite(got).all()
        assert_close(got, x, REFERENCES[name](x.astype(np.float64)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class TestOutputActivations:
    def test_sigmoid_output_layer_sweep(self):
        with np.errstate(all="ignore"):
            reference = _sigmoid(SWEEP.astype(np.float64))
        assert_close(output_harness("sigmoid")(SWEEP), SWEEP, reference)

    @pytest.mark.parametrize("width", [1, 3, 4, 10, 17])
    @pytest.mark.parametrize("scale", [1.0, 30.0, 1e3, 1e5, 1e38])
    def test_softmax_large_logits(self, width, scale):
        rng = np.random.default_rng(width)
        logits = (rng.uniform(-1.0, 1.0, size=(256, width)) * scale).astype(np.float32)
        got = output_harness("softmax", width, max_batch=256)(logits)
        assert np.isfinite(got).all()
        assert_close(got, logits, _softmax(logits))

    def test_softmax_extreme_rows(self):
        logits = np.array(
            [[3.4e38, -3.4e38, 0.0, 1.0], [88.7, 89.0, 100.0, 1000.0], [-1e4, -1e4 - 1, -1e4 - 2, -1e4 - 90],
             [0.0, 0.0, 0.0, 0.0], [-3.4e38, -3.4e38, -3.4e38, -3.4e38]],
            dtype=np.float32,
        )
        got = output_harness("softmax", 4, max_batch=8)(logits)
        assert_close(got, logits, _softmax(logits))
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)

    def test_softmax_nan_logit_gives_nan_row(self):
        logits = np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]], dtype=np.float32)
        got = output_harness("softmax", 3, max_batch=2)(logits[:, :])
        # identity weights mix the NaN into its whole row (0 * NaN), as the float64 reference would
        assert np.isnan(got[0]).all() and np.isfinite(got[1]).all()
