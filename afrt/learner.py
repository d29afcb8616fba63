"""Online learning: what the `update_weights` step does with the records that carry a ``target``.

An `OnlineLearner` buffers labelled records (the input row and the target as a vector) and, every
``every`` of them, makes one optimizer step on the agent's current weights with the arithmetic of
`af train` (`afcore.learning`: the loss of the output activation, backprop, sgd/adam/rprop), then
replaces the weights of the agent and all its replicas (`afrt.Agent.set_weights`). The step is a
pure function of the weights, the optimizer state and the buffered records, so the same stream of
records gives the same weights byte for byte, whatever the blocks it arrived in
(docs/training.md, "Online learning").

Its state (optimizer moments or steps, the records buffered so far, the counters) goes into the
checkpoint beside the weights (`state` / `restore`), so a restarted agent goes on where the last
checkpoint left it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from afcore.errors import ExecutionError, StateError
from afcore.learning import DEFAULT_LEARNING_RATES, SOFTMAX_SUM_TOLERANCE, Parameters, backprop, make_optimizer

from .weights import decode_array, encode_array

if TYPE_CHECKING:
    from afcore.steps import Step

__all__ = ["OnlineLearner", "Update", "learning_options"]

_F32 = np.float32


@dataclass(frozen=True)
class Update:
    """One optimizer step: what `update_weights` publishes on ``neural.updates`` (`afrt.messages.encode_update`).

    Attributes:
        sequence: 1 for the replica's first update, then one more each (kept across restarts).
        examples: the labelled records this step learnt from.
        examples_total: the labelled records learnt from so far, this one's included.
        loss: the batch's loss before the step (the loss of the output activation, docs/training.md).
        weights: the new weights, ``(weight [out, in], bias [out])`` per layer.
    """

    sequence: int
    examples: int
    examples_total: int
    loss: float
    weights: list[tuple[np.ndarray, np.ndarray]]


def learning_options(step: Step, default_rate: float | None) -> tuple[str, float, int]:
    """Return (optimizer, learning rate, every) of an ``update_weights`` step, defaults filled in.

    The learning rate defaults to the network's ``learning_rate`` (the .af's
    ``neural_config.learning_rate``), else to `afcore.learning.DEFAULT_LEARNING_RATES`.

    Raises:
        ExecutionError: AF5204 for an argument `af validate` would refuse.
    """
    from .steps import step_arg

    optimizer = step_arg(step, "optimizer")
    rate = step_arg(step, "learning_rate")
    if rate is None:
        rate = default_rate if default_rate is not None else DEFAULT_LEARNING_RATES[optimizer]
    return optimizer, float(rate), step_arg(step, "every")


class OnlineLearner:
    """Buffers an agent's labelled records and makes an optimizer step every ``every`` of them.

    Args:
        agent: the `afrt.Agent` whose weights it changes.
        optimizer: ``sgd``, ``adam`` or ``rprop``.
        learning_rate: the step size (rprop: the first step).
        every: labelled records per step.
    """

    def __init__(self, agent: Any, *, optimizer: str, learning_rate: float, every: int) -> None:
        network = agent.bundle.info.network
        self.agent = agent
        self.hidden, self.output = network.hidden_activation, network.output_activation
        self.labels = network.labels
        self.optimizer_name, self.learning_rate, self.every = optimizer, learning_rate, every
        self.output_size = agent.output_size
        sizes = [agent.input_size] + [out for _, out in agent.bundle.layers]
        self.params = Parameters(sizes, _F32)
        self.grad_flat, self.grads = self.params.gradient_buffers()
        self.optimizer = make_optimizer(optimizer, self.params.flat.size, learning_rate, _F32)
        self.normalization = agent.input_normalization()
        self._inputs: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self.updates = 0
        self.examples = 0
        #: the agent's `weights_generation` that ``params`` holds (-1: not read yet)
        self._generation = -1

    @property
    def pending(self) -> int:
        """Labelled records buffered for the next step."""
        return len(self._inputs)

    # targets ---------------------------------------------------------------------------------

    def target_vector(self, target: Any) -> np.ndarray:
        """Return a record's ``target`` as a float32 row of ``output_size`` values.

        A list of numbers is taken as it is; an integer k is a class index (the one-hot row with a 1
        at k; for one sigmoid output, 0 or 1); a string is one of the network's ``labels``.

        Raises:
            ExecutionError: AF5300 for a list of the wrong length or with a non-finite value,
                AF5301 for a class index out of range or an unknown label, AF5302 for a target
                the output's loss cannot take.
        """
        n = self.output_size
        if isinstance(target, str):
            if not self.labels or target not in self.labels:
                known = ", ".join(map(str, self.labels)) if self.labels else "none (neural_config.labels)"
                raise ExecutionError(f"unknown label {target!r} in `target`", code="AF5301",
                                     hint=f"the network's labels: {known}")
            target = self.labels.index(target)
        if isinstance(target, int) and not isinstance(target, bool):
            classes = n if n > 1 else (2 if self.output == "sigmoid" else 0)
            if not 0 <= target < classes:
                raise ExecutionError(
                    f"class index {target} in `target` is out of range" + (f" 0..{classes - 1}" if classes else ""),
                    code="AF5301", hint="a network with one linear output takes `target: [value]`" if not classes
                    else f"class indices of this network are 0 to {classes - 1}")
            row = np.zeros(n, _F32)
            row[target if n > 1 else 0] = 1 if n > 1 else target
            return row
        row = np.asarray(target, dtype=np.float64)
        if row.shape != (n,):
            raise ExecutionError(f"`target` has {row.size} values, the network has {n} outputs", code="AF5300",
                                 hint=f"give {n} numbers, a class index or a label")
        if not np.isfinite(row.astype(_F32)).all():
            raise ExecutionError("`target` holds a value that is no finite float32", code="AF5300")
        self._ensure_fits(row)
        return row.astype(_F32)

    def _ensure_fits(self, row: np.ndarray) -> None:
        if self.output == "softmax" and ((row < 0).any() or abs(row.sum() - 1) > SOFTMAX_SUM_TOLERANCE):
            raise ExecutionError("`target` is not a distribution (values >= 0 summing to 1)", code="AF5302",
                                 hint="a softmax output learns from one-hot rows, class indices or labels")
        if self.output == "sigmoid" and ((row < 0) | (row > 1)).any():
            raise ExecutionError("`target` has a value outside [0, 1]", code="AF5302",
                                 hint="a sigmoid output learns from targets between 0 and 1")

    # learning --------------------------------------------------------------------------------

    def add(self, row: np.ndarray, target: Any) -> Update | None:
        """Buffer one labelled record; make the optimizer step when ``every`` are buffered.

        Args:
            row: the record's input (float32, as the network receives it).
            target: the record's ``target`` as given (see `target_vector`).

        Returns:
            The `Update` when this record completed a batch, else None.

        Raises:
            ExecutionError: AF5300-AF5302 for a target that cannot be used (nothing is buffered);
                AF5303 when the step would make a weight NaN or infinite (the weights stay as
                they were, the buffered records are dropped).
        """
        vector = self.target_vector(target)
        self._inputs.append(np.array(row, dtype=_F32))
        self._targets.append(vector)
        if len(self._inputs) < self.every:
            return None
        return self._step()

    def _step(self) -> Update:
        x, t = np.stack(self._inputs), np.stack(self._targets)
        self._inputs, self._targets = [], []
        if self.normalization is not None:  # the network sees (x - mean) / scale, as both backends compute it
            mean, scale = self.normalization
            x = np.ascontiguousarray((x - mean) / scale, dtype=_F32)
        self._load_weights()
        before = self.params.flat.copy()
        loss = backprop(self.params.layers, self.grads, self.hidden, self.output, x, t)
        self.optimizer.step(self.params.flat, self.grad_flat)
        if not (math.isfinite(loss) and np.isfinite(self.params.flat).all()):
            self.params.flat[:] = before
            raise ExecutionError(f"the update after {self.examples + len(x)} labelled records would make the weights "
                                 "NaN or infinite; the weights are unchanged", code="AF5303",
                                 hint="lower update_weights' learning_rate, or scale the inputs")
        self.agent.set_weights(self.params.layers)
        self._generation = self.agent.weights_generation
        self.updates += 1
        self.examples += len(x)
        return Update(self.updates, len(x), self.examples, loss, self.agent.weights())

    def _load_weights(self) -> None:
        """Start from the agent's current weights when they changed since this learner's last step
        (the first step, another replica's, a federated round's)."""
        if self._generation == self.agent.weights_generation:
            return
        start = 0
        for weight, bias in self.agent.weights():
            for part in (weight, bias):
                self.params.flat[start : start + part.size] = part.reshape(-1)
                start += part.size

    # checkpoints -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Return what a checkpoint keeps of the learner (JSON-able; arrays as `encode_array`)."""
        optimizer = {name: encode_array(value) if isinstance(value, np.ndarray) else value
                     for name, value in vars(self.optimizer).items() if name not in ("scratch", "dtype", "rate")}
        return {
            "optimizer": self.optimizer_name, "learning_rate": self.learning_rate, "every": self.every,
            "updates": self.updates, "examples": self.examples, "optimizer_state": optimizer,
            "pending_inputs": [encode_array(r) for r in self._inputs],
            "pending_targets": [encode_array(t) for t in self._targets],
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Go on from a checkpoint's `state`. An optimizer or options other than the step's now start afresh
        (the counters are kept).

        Raises:
            StateError: AF5305 when the saved state is malformed.
        """
        try:
            self.updates, self.examples = int(saved["updates"]), int(saved["examples"])
            inputs = [decode_array(r) for r in saved["pending_inputs"]]
            targets = [decode_array(t) for t in saved["pending_targets"]]
            same = (saved["optimizer"], saved["learning_rate"], saved["every"]) == (
                self.optimizer_name, self.learning_rate, self.every)
            if same:
                for name, value in saved["optimizer_state"].items():
                    current = getattr(self.optimizer, name)
                    restored = decode_array(value) if isinstance(current, np.ndarray) else type(current)(value)
                    if isinstance(current, np.ndarray) and restored.shape != current.shape:
                        raise ValueError(name)
                    setattr(self.optimizer, name, restored)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"the checkpoint's learner state cannot be used ({exc})", code="AF5305",
                             hint="delete the checkpoint, or use a fresh --state-dir") from None
        if same:
            self._inputs = [r for r in inputs if r.shape == (self.agent.input_size,)]
            self._targets = [t for t in targets if t.shape == (self.output_size,)]
            if len(self._inputs) != len(self._targets):
                self._inputs, self._targets = [], []
