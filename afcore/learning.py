"""The numbers of learning, shared by `af train` (afc.train) and the runtime's online and federated
learning (afrt): activations and their derivatives, the losses, the backward pass and the optimizers,
in numpy (docs/training.md).

This is the one afcore module that imports numpy (an exception the "afcore stays light" import
contract names): the compiler and the runtime may not import each other, and both must learn with
the same arithmetic, or a model trained online would drift from one trained by `af train`. Nothing
else in afcore imports it; its users do, lazily.

float32 throughout (the same code runs in float64 when handed float64 arrays, which the gradient
checks do). The loss follows the output activation (`LOSSES`); each one's gradient with respect to
the output layer's pre-activation is ``(y - t) / N``, as in scikit-learn's MLP. The optimizers are
SGD, Adam (scikit-learn's form, with the bias correction folded into the step size) and iRprop-
(Igel and Hüsken 2000, as PyTorch's ``Rprop``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from afcore.errors import InternalError

__all__ = [
    "ACTIVATIONS",
    "ADAM_BETAS",
    "ADAM_EPSILON",
    "DEFAULT_LEARNING_RATES",
    "ERFC_P",
    "LOSSES",
    "OPTIMIZERS",
    "OPTIMIZER_CLASSES",
    "RPROP_ETAS",
    "RPROP_STEP_LIMITS",
    "SOFTMAX_SUM_TOLERANCE",
    "Adam",
    "Parameters",
    "Rprop",
    "Sgd",
    "activate",
    "activation_gradient",
    "backprop",
    "forward",
    "loss_and_delta",
    "loss_and_gradients",
    "make_optimizer",
]

#: optimizers `train_file` accepts
OPTIMIZERS = ("sgd", "adam", "rprop")
#: the loss each output activation trains with
LOSSES = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "linear": "squared_error"}
#: learning rate (the initial step for rprop) when neither the caller nor the header gives one
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001, "rprop": 0.01}
#: Adam's moment decay rates and the epsilon of its denominator (scikit-learn's and PyTorch's defaults)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
#: iRprop- factors for a step after a sign change and after none, and the limits of a step
RPROP_ETAS = (0.5, 1.2)
RPROP_STEP_LIMITS = (1e-6, 50.0)
#: how far from 1 a softmax target row may sum (`af train` and online learning take the same targets)
SOFTMAX_SUM_TOLERANCE = 1e-3
#: Numerical Recipes' erfc Chebyshev fit, erfc(z) = t*exp(-z*z + P(t)), t = 1/(1+z/2); fractional
#: error < 1.2e-7. The WebAssembly backend evaluates the same polynomial (afc._wasm_math).
ERFC_P = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
          0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


# --- activations -------------------------------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(z)
    for coefficient in reversed(ERFC_P):
        poly = poly * t + coefficient
    erfc = t * np.exp(-z * z + poly)
    return np.copysign(1.0 - erfc, x)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # 1/(1+e^-z) written with tanh: no overflow warning for large |z|, same value.
    return 0.5 + 0.5 * np.tanh(0.5 * z)


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _times(grad: np.ndarray, factor: Any) -> np.ndarray:
    grad *= factor
    return grad


class _Activation(NamedTuple):
    """``forward(z)``; ``backward(z, a, grad)`` returns ``grad * f'(z)`` (overwriting ``grad``), given
    ``a = f(z)`` and, when ``needs_input``, ``z`` (else None: the derivative is read from ``a``)."""

    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[Any, np.ndarray, np.ndarray], np.ndarray]
    needs_input: bool


#: hidden activation -> forward and backward, written from the definitions in docs/format.md
ACTIVATIONS: dict[str, _Activation] = {
    "relu": _Activation(lambda z: np.maximum(z, 0), lambda z, a, g: _times(g, a > 0), False),
    "leaky_relu": _Activation(lambda z: np.where(z > 0, z, z * 0.01),
                              lambda z, a, g: _times(g, np.where(a > 0, 1.0, 0.01)), False),
    "sigmoid": _Activation(_sigmoid, lambda z, a, g: _times(g, a * (1 - a)), False),
    "tanh": _Activation(np.tanh, lambda z, a, g: _times(g, 1 - a * a), False),
    "linear": _Activation(lambda z: z, lambda z, a, g: g, False),
    # elu: f'(z) = e^z = a + 1 where z <= 0
    "elu": _Activation(lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
                       lambda z, a, g: _times(g, np.where(a > 0, 1, a + 1)), False),
    "gelu": _Activation(lambda z: 0.5 * z * (1 + _erf(z * _INV_SQRT2)),
                        lambda z, a, g: _times(g, 0.5 * (1 + _erf(z * _INV_SQRT2))
                                               + z * _INV_SQRT_2PI * np.exp(-0.5 * z * z)), True),
    "softplus": _Activation(lambda z: np.logaddexp(0, z), lambda z, a, g: _times(g, _sigmoid(z)), True),
}


def activate(name: str, z: np.ndarray) -> np.ndarray:
    """Apply a hidden activation element-wise.

    Args:
        name: a key of `ACTIVATIONS` (the hidden activations of docs/format.md).
        z: pre-activations, float32 or float64.

    Returns:
        ``f(z)`` in z's dtype.
    """
    return ACTIVATIONS[name].forward(z).astype(z.dtype, copy=False)


def activation_gradient(name: str, z: np.ndarray | None, a: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Chain a gradient through a hidden activation.

    Args:
        name: a key of `ACTIVATIONS`.
        z: the pre-activations (may be None unless ``ACTIVATIONS[name].needs_input``).
        a: ``f(z)``.
        grad: dloss/da; overwritten.

    Returns:
        dloss/dz, that is ``grad * f'(z)`` (the ``grad`` array itself).
    """
    return ACTIVATIONS[name].backward(z, a, grad)


# --- losses ------------------------------------------------------------------------------------


def loss_and_delta(output_activation: str, z: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Compute the loss of a batch from the output layer's pre-activations, and its derivative.

    softmax: cross-entropy ``-sum(t log softmax(z)) / N``; sigmoid: binary cross-entropy, summed over
    outputs and averaged over records; linear: ``sum((z - t)^2) / (2 N)`` (scikit-learn's squared loss
    for one output). The derivative is ``(f(z) - t) / N`` in all three.

    Args:
        output_activation: ``softmax``, ``sigmoid`` or ``linear`` (picks the loss, `LOSSES`).
        z: the output layer's pre-activations [N, out].
        targets: [N, out], of a range the loss takes (`ensure_targets_fit`).

    Returns:
        The loss (a Python float, summed in float64) and dloss/dz in z's dtype.
    """
    n = z.shape[0]
    if output_activation == "softmax":
        shifted = z - z.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        loss = -float(np.sum(targets * (shifted - np.log(total)), dtype=np.float64)) / n
        delta = exp / total - targets
    elif output_activation == "sigmoid":
        # softplus(z) - t z = -t log s(z) - (1 - t) log(1 - s(z)), without log(0)
        loss = float(np.sum(np.logaddexp(0, z) - targets * z, dtype=np.float64)) / n
        delta = _sigmoid(z) - targets
    else:
        delta = z - targets
        loss = float(np.sum(delta * delta, dtype=np.float64)) / (2 * n)
    delta *= 1 / n
    return loss, delta.astype(z.dtype, copy=False)


# --- forward and backward ----------------------------------------------------------------------


def forward(layers: Sequence[tuple[np.ndarray, np.ndarray]], hidden: str, x: np.ndarray,
             keep: bool) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Return the output layer's pre-activation, and (when ``keep``) each layer's input and pre-activation."""
    inputs, pre = [], []
    h = x
    last = len(layers) - 1
    for i, (weight, bias) in enumerate(layers):
        z = h @ weight.T
        z += bias
        if i == last:
            return z, inputs + [h] if keep else inputs, pre
        if keep:
            inputs.append(h)
            pre.append(z if ACTIVATIONS[hidden].needs_input else None)
        h = activate(hidden, z)
    raise InternalError("a network without layers")  # pragma: no cover - NetworkSpec always has one


def backprop(layers: Sequence[tuple[np.ndarray, np.ndarray]], grads: Sequence[tuple[np.ndarray, np.ndarray]],
              hidden: str, output: str, x: np.ndarray, t: np.ndarray) -> float:
    """Write dloss/dparameter into ``grads`` (arrays shaped like ``layers``); return the loss."""
    z, inputs, pre = forward(layers, hidden, x, keep=True)
    loss, delta = loss_and_delta(output, z, t)
    for i in range(len(layers) - 1, -1, -1):
        grad_w, grad_b = grads[i]
        np.matmul(delta.T, inputs[i], out=grad_w)
        np.sum(delta, axis=0, out=grad_b)
        if i:
            # inputs[i] is layer i-1's activation a; pre[i-1] its pre-activation (kept where f' needs it)
            delta = activation_gradient(hidden, pre[i - 1], inputs[i], delta @ layers[i][0])
    return loss


def loss_and_gradients(layers: Sequence[tuple[np.ndarray, np.ndarray]], hidden: str, output: str,
                       x: np.ndarray, t: np.ndarray) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """Return the loss of a batch and its gradient with respect to every weight and bias.

    Args:
        layers: ``(weight [out, in], bias [out])`` per layer; their dtype is the computation's.
        hidden: the hidden activation; output: the output activation (which picks the loss).
        x: inputs [N, in]; t: targets [N, out].

    Returns:
        The loss and ``(dweight, dbias)`` per layer: the backward pass `train_network` runs.
    """
    grads = [(np.empty_like(w), np.empty_like(b)) for w, b in layers]
    return backprop(layers, grads, hidden, output, x, t), grads


# --- parameters and optimizers -----------------------------------------------------------------


class Parameters:
    """Every weight and bias in one flat array (so an optimizer step is a few whole-array operations),
    with ``(weight [out, in], bias [out])`` views per layer."""

    def __init__(self, sizes: Sequence[int], dtype: Any) -> None:
        shapes = [((n_out, n_in), (n_out,)) for n_in, n_out in zip(sizes, sizes[1:])]
        self.flat = np.zeros(sum(o * i + o for (o, i), _ in shapes), dtype=dtype)
        self.layers = self.views(self.flat, shapes)

    @staticmethod
    def views(flat: np.ndarray, shapes: list) -> list[tuple[np.ndarray, np.ndarray]]:
        layers, start = [], 0
        for (out, inp), _ in shapes:
            weight = flat[start : start + out * inp].reshape(out, inp)
            start += out * inp
            layers.append((weight, flat[start : start + out]))
            start += out
        return layers

    def gradient_buffers(self) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        flat = np.zeros_like(self.flat)
        return flat, self.views(flat, [(w.shape, b.shape) for w, b in self.layers])


class Sgd:
    def __init__(self, size: int, learning_rate: float, dtype: Any) -> None:
        self.rate = dtype.type(learning_rate)
        self.scratch = np.empty(size, dtype)

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        np.multiply(grads, self.rate, out=self.scratch)
        params -= self.scratch


class Adam:
    def __init__(self, size: int, learning_rate: float, dtype: Any) -> None:
        self.rate, self.dtype, self.t = learning_rate, dtype, 0
        self.m, self.v, self.scratch = np.zeros(size, dtype), np.zeros(size, dtype), np.empty(size, dtype)

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        beta1, beta2 = ADAM_BETAS
        self.t += 1
        rate = self.rate * math.sqrt(1 - beta2**self.t) / (1 - beta1**self.t)
        m, v, s = self.m, self.v, self.scratch
        m *= beta1
        np.multiply(grads, 1 - beta1, out=s)
        m += s
        v *= beta2
        np.multiply(grads, grads, out=s)
        s *= 1 - beta2
        v += s
        np.sqrt(v, out=s)
        s += ADAM_EPSILON
        np.divide(m, s, out=s)
        s *= self.dtype.type(rate)
        params -= s


class Rprop:
    """iRprop-: a step grows by eta+ while the gradient keeps its sign; after a sign change it shrinks
    by eta- and that weight skips one update (its remembered gradient is set to 0)."""

    def __init__(self, size: int, learning_rate: float, dtype: Any) -> None:
        self.steps = np.full(size, learning_rate, dtype)
        self.previous = np.zeros(size, dtype)

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        eta_minus, eta_plus = RPROP_ETAS
        sign = np.sign(grads * self.previous)
        self.steps *= np.where(sign > 0, eta_plus, np.where(sign < 0, eta_minus, 1.0)).astype(self.steps.dtype)
        np.clip(self.steps, *RPROP_STEP_LIMITS, out=self.steps)
        grads = np.where(sign < 0, 0, grads).astype(grads.dtype)
        params -= np.sign(grads) * self.steps
        self.previous = grads


OPTIMIZER_CLASSES = {"sgd": Sgd, "adam": Adam, "rprop": Rprop}


def make_optimizer(name: str, size: int, learning_rate: float, dtype: Any) -> Sgd | Adam | Rprop:
    """Return a fresh optimizer state for ``size`` flat parameters.

    Args:
        name: one of `OPTIMIZERS`.
        size: the length of the flat parameter array it will step (`Parameters.flat`).
        learning_rate: the step size (the initial step for rprop).
        dtype: the parameters' numpy dtype.

    Returns:
        An object whose ``step(params, grads)`` updates ``params`` in place.
    """
    return OPTIMIZER_CLASSES[name](size, learning_rate, np.dtype(dtype))
