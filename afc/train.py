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
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from afcore.diagnostics import Diagnostic
from afcore.errors import CheckError, ExecutionError, InternalError, SourceError, UsageError
from afcore.learning import (
    ACTIVATIONS,
    DEFAULT_LEARNING_RATES,
    LOSSES,
    OPTIMIZERS,
    SOFTMAX_SUM_TOLERANCE,
    Parameters,
    activate,
    activation_gradient,
    backprop,
    forward,
    loss_and_delta,
    loss_and_gradients,
    make_optimizer,
)

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

#: records per batch when none is given (rprop: the whole training set, the batch it was designed for)
DEFAULT_BATCH_SIZE = 32
#: rows per forward pass when evaluating the validation set (bounds its memory)
EVAL_CHUNK = 4096


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


def _network_inputs(network: NetworkSpec, inputs: np.ndarray) -> np.ndarray:
    """What the first layer sees: the records, through the network's input normalisation when it has one
    (``(x - mean) / scale`` in float32, as both backends compute it), so training learns what inference runs."""
    if not network.normalized:
        return inputs
    return np.ascontiguousarray((inputs - network.input_mean) / network.input_scale, dtype=np.float32)


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
    params = Parameters([network.input_size, *(layer.out_size for layer in network.layers)], np.dtype(np.float32))
    for (weight, bias), layer in zip(params.layers, network.layers):
        weight[...], bias[...] = layer.weight, layer.bias
    inputs = _network_inputs(network, dataset.inputs)
    run = _Run(network, params, opts, inputs[train_rows], dataset.targets[train_rows],
               inputs[val_rows], dataset.targets[val_rows])
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

    def __init__(self, network: NetworkSpec, params: Parameters, options: TrainOptions, x: np.ndarray,
                 t: np.ndarray, x_val: np.ndarray, t_val: np.ndarray) -> None:
        self.hidden, self.output = network.hidden_activation, network.output_activation
        self.params, self.options = params, options
        self.grad_flat, self.grads = params.gradient_buffers()
        size, dtype = params.flat.size, params.flat.dtype
        self.optimizer = make_optimizer(options.optimizer, size, float(options.learning_rate), dtype)
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
            total += backprop(self.params.layers, self.grads, self.hidden, self.output, x, t) * len(x)
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
            z, _, _ = forward(self.params.layers, self.hidden, x, keep=False)
            total += loss_and_delta(self.output, z, t)[0] * len(x)
            if self.output == "softmax":
                correct += int((z.argmax(axis=1) == t.argmax(axis=1)).sum())
            elif self.output == "sigmoid":
                correct += int(((z > 0) == (t > 0.5)).all(axis=1).sum())
        return total / n, (correct / n if self.output != "linear" else None)


def _copy(params: Parameters) -> Parameters:
    clone = object.__new__(Parameters)
    clone.flat = params.flat.copy()
    clone.layers = Parameters.views(clone.flat, [(w.shape, b.shape) for w, b in params.layers])
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
