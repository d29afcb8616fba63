"""Train the network of an .af file with backpropagation in numpy (docs/training.md).

`train_file` loads the .af (`afc.agentfile`), reads the records (`afc.datasets`), runs
`train_network` and writes the new `neural_weights` back through `afc.agentfile.render_agent_file`
and `afc.writer.write_af_file`, the writers `af pack` uses: header comments and key order are
kept, `modified` is updated, the other sections are kept, and the result must load as a valid file
before it replaces anything. Nothing is written until training has finished, so an interrupt
(Ctrl-C) leaves the file as it was.

The numbers: float32 throughout (the same code runs in float64 when handed float64 arrays, which the
gradient checks do). The loss follows the output activation (`LOSSES`); each one's gradient with
respect to the output layer's pre-activation is ``(y - t) / N``, as in scikit-learn's MLP. The
optimizers are SGD, Adam (scikit-learn's form, with the bias correction folded into the step size)
and iRprop- (Igel and Hüsken 2000, as PyTorch's ``Rprop``). One seed drives the validation split
and the shuffling, so the same seed gives the same weights byte for byte.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np

from afcore.diagnostics import Diagnostic
from afcore.errors import CheckError, ExecutionError, InternalError, SourceError, UsageError

# Numerical Recipes' erfc fit (fractional error < 1.2e-7), the one the WebAssembly backend uses too.
from ._wasm_math import ERFC_P as _ERFC_P
from .writer import write_af_file

if TYPE_CHECKING:
    from .agentfile import AgentFile
    from .datasets import Dataset
    from .spec import NetworkSpec

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "OPTIMIZERS",
    "EpochStats",
    "TrainOptions",
    "TrainResult",
    "activate",
    "activation_gradient",
    "ensure_targets_fit",
    "loss_and_delta",
    "loss_and_gradients",
    "render_trained",
    "train_file",
    "train_network",
]

#: optimizers `train_file` accepts
OPTIMIZERS = ("sgd", "adam", "rprop")
#: the loss each output activation trains with
LOSSES = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy", "linear": "squared_error"}
#: learning rate (the initial step for rprop) when neither the caller nor the header gives one
DEFAULT_LEARNING_RATES = {"sgd": 0.01, "adam": 0.001, "rprop": 0.01}
#: records per batch when none is given (rprop: the whole training set, the batch it was designed for)
DEFAULT_BATCH_SIZE = 32
#: Adam's moment decay rates and the epsilon of its denominator (scikit-learn's and PyTorch's defaults)
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8
#: iRprop- factors for a step after a sign change and after none, and the limits of a step
RPROP_ETAS = (0.5, 1.2)
RPROP_STEP_LIMITS = (1e-6, 50.0)
#: rows per forward pass when evaluating the validation set (bounds its memory)
EVAL_CHUNK = 4096
#: how far a softmax target row's sum may be from 1
SOFTMAX_SUM_TOLERANCE = 1e-3


# --- activations -------------------------------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(z)
    for coefficient in reversed(_ERFC_P):
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


def _forward(layers: Sequence[tuple[np.ndarray, np.ndarray]], hidden: str, x: np.ndarray,
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


def _backprop(layers: Sequence[tuple[np.ndarray, np.ndarray]], grads: Sequence[tuple[np.ndarray, np.ndarray]],
              hidden: str, output: str, x: np.ndarray, t: np.ndarray) -> float:
    """Write dloss/dparameter into ``grads`` (arrays shaped like ``layers``); return the loss."""
    z, inputs, pre = _forward(layers, hidden, x, keep=True)
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
    return _backprop(layers, grads, hidden, output, x, t), grads


# --- parameters and optimizers -----------------------------------------------------------------


class _Parameters:
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


class _Sgd:
    def __init__(self, size: int, learning_rate: float, dtype: Any) -> None:
        self.rate = dtype.type(learning_rate)
        self.scratch = np.empty(size, dtype)

    def step(self, params: np.ndarray, grads: np.ndarray) -> None:
        np.multiply(grads, self.rate, out=self.scratch)
        params -= self.scratch


class _Adam:
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


class _Rprop:
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


_OPTIMIZER_CLASSES = {"sgd": _Sgd, "adam": _Adam, "rprop": _Rprop}


# --- options, statistics, results --------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    """How to train; `train_file`'s keyword arguments (see there).

    ``learning_rate``, ``batch_size`` and ``seed`` may be None: `resolve` fills them in.
    ``shuffle=False`` keeps the records' order in every epoch (the split still draws from the seed).
    """

    epochs: int = 100
    batch_size: int | None = None
    optimizer: str = "sgd"
    learning_rate: float | None = None
    validation_split: float = 0.0
    seed: int | None = None
    target_loss: float | None = None
    patience: int | None = None
    shuffle: bool = True

    def resolve(self, network: NetworkSpec, records: int) -> TrainOptions:
        """Check the options and return them with every None that has a default filled in.

        Raises:
            UsageError: AF6020 for a value out of range or an unknown optimizer.
        """
        _check_options(self)
        rate = self.learning_rate or network.learning_rate or DEFAULT_LEARNING_RATES[self.optimizer]
        batch = self.batch_size or (records if self.optimizer == "rprop" else DEFAULT_BATCH_SIZE)
        seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "little")
        return replace(self, learning_rate=float(rate), batch_size=batch, seed=seed)


def _check_options(options: TrainOptions) -> None:
    checks = [
        (options.optimizer in OPTIMIZERS, f"unknown optimizer `{options.optimizer}`", "use sgd, adam or rprop"),
        (options.epochs >= 1, f"epochs must be at least 1, not {options.epochs}", None),
        (options.batch_size is None or options.batch_size >= 1, f"batch size must be at least 1, not {options.batch_size}", None),
        (options.learning_rate is None or options.learning_rate > 0, f"learning rate must be positive, not {options.learning_rate}", None),
        (0 <= options.validation_split < 1, f"validation split must be in [0, 1), not {options.validation_split}", "e.g. 0.2 holds out a fifth of the records"),
        (options.seed is None or 0 <= options.seed < 2**64, f"seed must be an integer in [0, 2^64), not {options.seed}", None),
        (options.target_loss is None or options.target_loss >= 0, f"target loss must not be negative, not {options.target_loss}", None),
        (options.patience is None or options.patience >= 1, f"patience must be at least 1 epoch, not {options.patience}", None),
    ]
    for ok, message, hint in checks:
        if not ok:
            raise UsageError(message, code="AF6020", hint=hint)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did; `train_file` hands one to ``progress`` after each epoch.

    Attributes:
        epoch: 1-based; epochs: the most that will run.
        loss: the mean training loss over the epoch's batches (weights changing as they go).
        val_loss, val_accuracy: on the held-out records after the epoch, or None without a split
            (accuracy is None for a linear output too: argmax for softmax, every output on the
            right side of 0.5 for sigmoid).
        samples_per_second: training records per second of the epoch's updates.
        seconds: the epoch's wall time, evaluation included.
    """

    epoch: int
    epochs: int
    loss: float
    val_loss: float | None
    val_accuracy: float | None
    samples_per_second: float
    seconds: float

    def to_json(self) -> dict[str, Any]:
        """Return the stats as a JSON-ready dict (the CLI's ``--json`` history)."""
        return {"epoch": self.epoch, "loss": self.loss, "val_loss": self.val_loss, "val_accuracy": self.val_accuracy,
                "samples_per_second": self.samples_per_second, "seconds": self.seconds}


@dataclass(frozen=True)
class TrainResult:
    """What a training run did and how it ended.

    Attributes:
        path: the file written (None from `train_network`, which writes nothing).
        options: the options used, defaults filled in (``options.seed`` is the seed, drawn when none was given).
        epochs: epochs run; stopped: ``"epochs"``, ``"target_loss"`` or ``"patience"``.
        best_epoch: the epoch whose weights were kept (the last one, unless ``patience`` stopped the run).
        loss, val_loss, val_accuracy: of the kept epoch (see `EpochStats`).
        loss_function: ``cross_entropy``, ``binary_cross_entropy`` or ``squared_error`` (`LOSSES`).
        data_source: the data file, or ``<file>:training_data``; data_sha256: sha256 of its bytes.
        samples, validation_samples: records trained on and held out.
        history: one `EpochStats` per epoch run; seconds: wall time of the whole run.
    """

    path: Path | None
    options: TrainOptions
    epochs: int
    stopped: str
    best_epoch: int
    loss: float
    val_loss: float | None
    val_accuracy: float | None
    loss_function: str
    data_source: str
    data_sha256: str
    samples: int
    validation_samples: int
    history: tuple[EpochStats, ...] = field(repr=False)
    seconds: float

    @property
    def seed(self) -> int:
        """Return the seed the run used."""
        return int(self.options.seed or 0)

    def header_record(self) -> dict[str, Any]:
        """Return the proposed optional header field ``training`` (docs/training.md, "Provenance")."""
        record: dict[str, Any] = {
            "optimizer": self.options.optimizer, "learning_rate": self.options.learning_rate,
            "batch_size": self.options.batch_size, "epochs": self.epochs, "seed": self.seed,
            "loss_function": self.loss_function, "loss": _rounded(self.loss),
        }
        if self.val_loss is not None:
            record.update(validation_split=self.options.validation_split, val_loss=_rounded(self.val_loss))
        if self.val_accuracy is not None:
            record["val_accuracy"] = _rounded(self.val_accuracy)
        record["data_sha256"] = self.data_sha256
        return record

    def to_json(self) -> dict[str, Any]:
        """Return the summary ``af train --json`` prints: the header record, the file, the history."""
        return {"path": str(self.path) if self.path else None, "stopped": self.stopped, "best_epoch": self.best_epoch,
                "data": self.data_source, "samples": self.samples, "validation_samples": self.validation_samples,
                "seconds": self.seconds, "training": self.header_record(),
                "history": [stats.to_json() for stats in self.history]}


def _rounded(value: float) -> float:
    return float(f"{value:.6g}")


# --- training ----------------------------------------------------------------------------------


def train_network(network: NetworkSpec, dataset: Dataset, *, options: TrainOptions = TrainOptions(),
                  progress: Callable[[EpochStats], object] | None = None
                  ) -> tuple[dict[str, np.ndarray], TrainResult]:
    """Train ``network`` (its weights are the starting point) on ``dataset``; write nothing.

    Args:
        network: the network to start from (`afc.spec.NetworkSpec`, e.g. ``agent.spec().network``).
        dataset: the records (`afc.datasets.Dataset`).
        options: see `TrainOptions`.
        progress: called with an `EpochStats` after every epoch.

    Returns:
        The trained tensors (``layers.<i>.weight`` [out, in] and ``layers.<i>.bias``, float32) and the result.

    Raises:
        UsageError: AF6020 for bad options, AF6021 when the split leaves no record on one side.
        CheckError: AF6010 for targets the output's loss cannot take.
        ExecutionError: AF6030 when the loss becomes NaN or infinite.
    """
    opts = options.resolve(network, len(dataset))
    ensure_targets_fit(network.output_activation, dataset)
    rng = np.random.default_rng(opts.seed)
    train_rows, val_rows = _split(len(dataset), opts.validation_split, rng)
    params = _Parameters([network.input_size, *(layer.out_size for layer in network.layers)], np.dtype(np.float32))
    for (weight, bias), layer in zip(params.layers, network.layers):
        weight[...], bias[...] = layer.weight, layer.bias
    run = _Run(network, params, opts, dataset.inputs[train_rows], dataset.targets[train_rows],
               dataset.inputs[val_rows], dataset.targets[val_rows])
    started = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run is reported as AF6030, not as warnings
        history, stopped = run.loop(rng, progress)
    best = min(history, key=lambda s: run.monitored(s)) if stopped == "patience" else history[-1]
    tensors = {}
    for i, (weight, bias) in enumerate(run.best_params.layers if stopped == "patience" else params.layers):
        tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = weight.copy(), bias.copy()
    result = TrainResult(None, opts, len(history), stopped, best.epoch, best.loss, best.val_loss, best.val_accuracy,
                         LOSSES[network.output_activation], dataset.source, dataset.sha256, len(train_rows),
                         len(val_rows), tuple(history), time.perf_counter() - started)
    return tensors, result


def _split(records: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw the held-out rows; return (training rows, validation rows), each in file order."""
    if fraction == 0:
        return np.arange(records), np.arange(0)
    held = int(round(records * fraction))
    if held < 1 or held >= records:
        raise UsageError(f"a validation split of {fraction} leaves {records - held} of {records} records to train on "
                         f"and {held} to validate", code="AF6021", hint="choose a split that leaves records on both sides")
    order = rng.permutation(records)
    return np.sort(order[held:]), np.sort(order[:held])


def ensure_targets_fit(output_activation: str, dataset: Dataset) -> None:
    """Check that the output's loss can take every target.

    softmax: each target row is a distribution (values >= 0 summing to 1, e.g. one-hot); sigmoid: each
    value is in [0, 1]; linear: anything finite.

    Args:
        output_activation: the network's output activation.
        dataset: the records.

    Raises:
        CheckError: AF6010, naming the first record (and its line, for text files) that does not fit.
    """
    t = dataset.targets
    if output_activation == "softmax":
        bad = (t < 0).any(axis=1) | (np.abs(t.sum(axis=1, dtype=np.float64) - 1) > SOFTMAX_SUM_TOLERANCE)
        what, hint = "is not a distribution", "a softmax output trains on one-hot rows or class indices"
    elif output_activation == "sigmoid":
        bad = ((t < 0) | (t > 1)).any(axis=1)
        what, hint = "has a value outside [0, 1]", "a sigmoid output trains on targets between 0 and 1"
    else:
        return
    if bad.any():
        index = int(np.argmax(bad))
        raise CheckError([Diagnostic("AF6010", "error", f"the target of {dataset.describe(index)} of "
                                     f"`{dataset.source}` {what}", span=dataset.span_of(index), help=hint)])


class _Run:
    """One training run's state: parameters, gradient buffers, optimizer, data."""

    def __init__(self, network: NetworkSpec, params: _Parameters, options: TrainOptions, x: np.ndarray,
                 t: np.ndarray, x_val: np.ndarray, t_val: np.ndarray) -> None:
        self.hidden, self.output = network.hidden_activation, network.output_activation
        self.params, self.options = params, options
        self.grad_flat, self.grads = params.gradient_buffers()
        size, dtype = params.flat.size, params.flat.dtype
        self.optimizer = _OPTIMIZER_CLASSES[options.optimizer](size, float(options.learning_rate), dtype)
        self.x, self.t, self.x_val, self.t_val = x, t, x_val, t_val
        self.best_params = params

    def monitored(self, stats: EpochStats) -> float:
        """The loss that `target_loss` and `patience` watch: validation when there is a split, else training."""
        return stats.val_loss if stats.val_loss is not None else stats.loss

    def loop(self, rng: np.random.Generator, progress: Callable[[EpochStats], object] | None
             ) -> tuple[list[EpochStats], str]:
        options, history = self.options, []
        best_loss, best_epoch = math.inf, 0
        for epoch in range(1, options.epochs + 1):
            stats = self.epoch(epoch, rng)
            history.append(stats)
            if progress is not None:
                progress(stats)
            monitored = self.monitored(stats)
            if monitored < best_loss:
                best_loss, best_epoch = monitored, epoch
                if options.patience:
                    self.best_params = _copy(self.params)
            if options.target_loss is not None and monitored <= options.target_loss:
                return history, "target_loss"
            if options.patience and epoch - best_epoch >= options.patience:
                return history, "patience"
        return history, "epochs"

    def epoch(self, epoch: int, rng: np.random.Generator) -> EpochStats:
        started = time.perf_counter()
        n, batch = len(self.x), int(self.options.batch_size or DEFAULT_BATCH_SIZE)
        order = rng.permutation(n) if self.options.shuffle else None
        total = 0.0
        for start in range(0, n, batch):
            if order is None:
                x, t = self.x[start : start + batch], self.t[start : start + batch]
            else:
                rows = order[start : start + batch]
                x, t = self.x[rows], self.t[rows]
            total += _backprop(self.params.layers, self.grads, self.hidden, self.output, x, t) * len(x)
            self.optimizer.step(self.params.flat, self.grad_flat)
        trained = time.perf_counter() - started
        loss = total / n
        if not math.isfinite(loss):
            raise ExecutionError(f"the training loss became {loss} in epoch {epoch}", code="AF6030",
                                 hint="lower the learning rate, or scale the inputs")
        val_loss, val_accuracy = self.evaluate() if len(self.x_val) else (None, None)
        return EpochStats(epoch, self.options.epochs, loss, val_loss, val_accuracy, n / max(trained, 1e-9),
                          time.perf_counter() - started)

    def evaluate(self) -> tuple[float, float | None]:
        """Return the loss and accuracy of the held-out records."""
        total, correct, n = 0.0, 0, len(self.x_val)
        for start in range(0, n, EVAL_CHUNK):
            x, t = self.x_val[start : start + EVAL_CHUNK], self.t_val[start : start + EVAL_CHUNK]
            z, _, _ = _forward(self.params.layers, self.hidden, x, keep=False)
            total += loss_and_delta(self.output, z, t)[0] * len(x)
            if self.output == "softmax":
                correct += int((z.argmax(axis=1) == t.argmax(axis=1)).sum())
            elif self.output == "sigmoid":
                correct += int(((z > 0) == (t > 0.5)).all(axis=1).sum())
        return total / n, (correct / n if self.output != "linear" else None)


def _copy(params: _Parameters) -> _Parameters:
    clone = object.__new__(_Parameters)
    clone.flat = params.flat.copy()
    clone.layers = _Parameters.views(clone.flat, [(w.shape, b.shape) for w, b in params.layers])
    return clone


# --- the file ----------------------------------------------------------------------------------


def train_file(
    path: str | Path,
    *,
    data: str | Path | None = None,
    epochs: int = 100,
    batch_size: int | None = None,
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    validation_split: float = 0.0,
    seed: int | None = None,
    target_loss: float | None = None,
    patience: int | None = None,
    output: str | Path | None = None,
    progress: Callable[[EpochStats], object] | None = None,
) -> TrainResult:
    """Train the network an .af file declares and write the new weights into the file.

    The starting point is the file's own `neural_weights`. The file is replaced atomically (or
    ``output`` is written) only after training ends and the result loads as a valid .af; an
    exception, KeyboardInterrupt included, leaves every file as it was.

    Args:
        path: the .af file.
        data: a .safetensors (``inputs``, ``targets``), .jsonl or FANN .data file; None trains on the
            file's `training_data` section.
        epochs: the most epochs to run.
        batch_size: records per update; None is 32 (the whole training set for rprop).
        optimizer: ``"sgd"``, ``"adam"`` or ``"rprop"`` (iRprop-).
        learning_rate: None takes the header's ``neural_config.learning_rate`` (else 0.01, 0.001 for
            adam); for rprop, the initial step.
        validation_split: the share of records held out, drawn with ``seed``.
        seed: seeds the split and the shuffling; None draws one (returned in the result).
        target_loss: stop once the watched loss (validation if there is a split, else training) is at most this.
        patience: stop when the watched loss has not improved for this many epochs, and keep the best
            epoch's weights.
        output: write here instead of replacing ``path``.
        progress: called with an `EpochStats` after each epoch.

    Returns:
        What was done (`TrainResult`; ``result.seed`` is the seed used).

    Raises:
        UsageError: AF0901 unreadable .af; AF6000/AF6001 unreadable or unknown data file; AF6002 nothing
            to train on; AF6020/AF6021 bad options; AF6031 the output cannot be written.
        ParseError, SchemaError, CheckError: the .af is invalid; CheckError AF6003-AF6010 (and
            AF2101/AF2102): the data is.
        ExecutionError: AF6030 when training diverges.
    """
    from .agentfile import load_agent_file

    agent = load_agent_file(path)
    network = agent.spec().network
    dataset = _dataset(agent, data, network)
    options = TrainOptions(epochs, batch_size, optimizer, learning_rate, validation_split, seed, target_loss, patience)
    tensors, result = train_network(network, dataset, options=options, progress=progress)
    target = Path(output) if output is not None else Path(path)
    write_af_file(target, render_trained(agent, tensors, target=str(target), record=result.header_record()),
                  code="AF6031")
    return replace(result, path=target)


def _dataset(agent: AgentFile, data: str | Path | None, network: NetworkSpec) -> Dataset:
    import hashlib

    from .datasets import dataset_from_tensors, ensure_finite, load_dataset

    sizes = {"input_size": network.input_size, "output_size": network.output_size}
    if data is not None:
        return load_dataset(data, **sizes)
    tensors = agent.training_data
    if tensors is None:
        raise UsageError(f"`{agent.path}` has no training_data section and no data file was given", code="AF6002",
                         hint="give a data file (`af train --data FILE`) or pack one with `af pack --training-data`")
    payload = agent.sections["training_data"].payload
    dataset = dataset_from_tensors(tensors, source=f"{agent.path}:training_data",
                                   sha256=hashlib.sha256(payload).hexdigest(), **sizes)
    ensure_finite(dataset)
    return dataset


def render_trained(agent: AgentFile, tensors: dict[str, np.ndarray], *, target: str,
                   now: str | None = None, record: dict[str, Any] | None = None) -> bytes:
    """Return the bytes of ``agent`` with ``tensors`` as its `neural_weights` and `modified` set to ``now``.

    The header keeps its comments and key order (ruamel round trip); every other section is kept.
    ``agent`` itself is edited (its sections and header tree), as `afc.write_agent_file` expects.

    Args:
        agent: the loaded file.
        tensors: the new ``layers.<i>.weight``/``layers.<i>.bias`` arrays.
        target: the path diagnostics name when the result is checked.
        now: the RFC 3339 time for `modified`; None is the current UTC time.
        record: what made the weights (`TrainResult.header_record`), written as the optional
            header field ``training`` (replacing an older one); None leaves the header's as it is.

    Raises:
        InternalError: when the result would not load (a bug in training or writing).
    """
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    from .agentfile import load_agent_bytes, render_agent_file
    from .tensors import encode_tensors

    agent.sections["neural_weights"] = replace(agent.sections["neural_weights"], payload=encode_tensors(tensors))
    stamp = DoubleQuotedScalarString(now or _utc_now())
    tree = agent.yaml
    if "modified" in tree:
        tree["modified"] = stamp
    else:
        keys = list(tree)
        after = next((k for k in ("created", "author", "description", "name") if k in keys), keys[0])
        tree.insert(keys.index(after) + 1, "modified", stamp)
    if record is not None:
        tree["training"] = {key: value for key, value in record.items() if value is not None}
    data = render_agent_file(agent)
    try:
        load_agent_bytes(data, path=target)
    except SourceError as error:
        raise InternalError(f"training produced an invalid file: {error.message}") from None
    return data


def _utc_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
