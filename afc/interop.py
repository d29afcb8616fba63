"""The models users already have, as .af files: the shared half of `af import` and `af.from_sklearn`.

Each importer (`afc.import_onnx`, `afc.fann`, `from_sklearn` below) reads a foreign model into an
`ImportedNetwork`: dense layers as float64 ``[out, in]`` weights, one hidden activation, the output
activation, and what stands before and after the network (an input normalisation, class labels).
`render_imported` turns that into the bytes of a valid .af file, which it loads once to be sure.
Nothing here unpickles anything: a scikit-learn estimator is read by its fitted attributes.

Codes: AF6050-AF6099 (docs/diagnostics.md, "Interop").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

import numpy as np

from afcore.diagnostics import Diagnostic
from afcore.errors import CheckError, InternalError, SourceError, UsageError

from .spec import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS

if TYPE_CHECKING:
    from .agentfile import AgentFile

__all__ = [
    "ImportedNetwork",
    "agent_name",
    "fail",
    "from_sklearn",
    "import_model",
    "import_model_bytes",
    "render_imported",
]

#: a valid agent name (the `name` pattern of schemas/af-1.0.schema.json)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: scikit-learn's activation names -> af's (MLPClassifier/MLPRegressor ``activation``, ``out_activation_``)
SKLEARN_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu",
                       "softmax": "softmax"}


@dataclass(frozen=True, eq=False)
class ImportedNetwork:
    """A dense feedforward network read from another tool, before it becomes an .af file.

    Attributes:
        weights: one float64 ``[out, in]`` matrix per layer, the output layer last.
        biases: one float64 ``[out]`` vector per layer.
        hidden_activation: af's name of the activation of every hidden layer (`HIDDEN_ACTIVATIONS`).
        output_activation: af's name of the output layer's activation (`OUTPUT_ACTIVATIONS`).
        mean, scale: an input normalisation ``(x - mean) / scale`` per input (StandardScaler's), or None.
        labels: the class of each output (or of 0 and 1 for one sigmoid output), or None.
        source: what it was read from, for the file's description.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    hidden_activation: str
    output_activation: str
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    labels: tuple[Any, ...] | None = None
    source: str = ""

    @property
    def sizes(self) -> list[int]:
        """Return ``[input_size, *hidden_layers, output_size]``."""
        return [int(self.weights[0].shape[1]), *(int(w.shape[0]) for w in self.weights)]

    def normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return ``(mean, scale)`` with one float64 value per input, or None without a normalisation."""
        if self.mean is None and self.scale is None:
            return None
        n_in = self.weights[0].shape[1]
        mean = np.zeros(n_in) if self.mean is None else np.asarray(self.mean, np.float64)
        scale = np.ones(n_in) if self.scale is None else np.asarray(self.scale, np.float64)
        return np.broadcast_to(mean, (n_in,)).copy(), np.broadcast_to(scale, (n_in,)).copy()

    def declarable_normalization(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the normalisation when the header can declare it (finite, every scale > 0 in float32), else None."""
        found = self.normalization()
        if found is None:
            return None
        mean, scale = (np.asarray(a, np.float32) for a in found)
        return found if np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all() else None

    def folded(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Return the layers with the input normalisation folded into the first one (float64).

        ``W ((x - m) / s) + b = (W / s) x + (b - (W / s) m)``: the same function, for a normalisation
        the header cannot declare (a negative or zero scale from a hand-made graph).
        """
        weights, biases = [np.array(w, np.float64) for w in self.weights], [np.array(b, np.float64) for b in self.biases]
        found = self.normalization()
        if found is not None:
            mean, scale = found
            weights[0] = weights[0] / scale[None, :]
            biases[0] = biases[0] - weights[0] @ mean
        return weights, biases

    def declarable_labels(self) -> tuple[Any, ...] | None:
        """Return the labels when there is one per output (two for one sigmoid output), else None."""
        if not self.labels:
            return None
        outputs = self.sizes[-1]
        wanted = 2 if outputs == 1 and self.output_activation == "sigmoid" else outputs
        return tuple(_plain(label) for label in self.labels) if len(self.labels) == wanted else None


def fail(code: str, message: str, hint: str) -> NoReturn:
    """Raise `CheckError` with one diagnostic about a foreign model.

    The diagnostic has no span: a binary model has no lines to show; the message names the file and
    the node, neuron or layer at fault.
    """
    raise CheckError([Diagnostic(code, "error", message, help=hint)])


def agent_name(path: str | Path | None, name: str | None = None) -> str:
    """Return ``name``, or an agent name made from the file's stem (invalid characters become ``-``).

    Raises:
        UsageError: AF6052 when ``name`` is given and is not a valid agent name.
    """
    if name is not None:
        if not _NAME.fullmatch(name):
            raise UsageError(f"`{name}` is not a valid agent name", code="AF6052",
                             hint="use letters, digits, `.`, `_` and `-`, starting with a letter or digit (at most 64)")
        return name
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(path).stem if path else "")[:64].lstrip("._-")
    return stem or "imported"


def import_model(path: str | Path, *, name: str | None = None) -> bytes:
    """Read an ONNX MLP or a FANN ``.net`` file and return the bytes of an equivalent .af file.

    Args:
        path: the model; its content, not its suffix, says which it is (``FANN_`` starts a FANN file).
        name: the agent's name (default: made from the file's stem).

    Returns:
        A valid .af file (checked by loading it).

    Raises:
        UsageError: AF6050 when the file cannot be read, AF6052 for a bad name.
        CheckError: AF6051, AF6053-AF6056 (ONNX), AF6060-AF6061 (FANN): what cannot be mapped.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read `{path}`: {exc.strerror or exc}", code="AF6050",
                         hint="check the path and its permissions") from None
    return import_model_bytes(data, path=str(path), name=agent_name(path, name))


def import_model_bytes(data: bytes, *, path: str, name: str) -> bytes:
    """Return the .af bytes of a model given as bytes (see `import_model`).

    Args:
        data: the model file's bytes (``FANN_`` at the start: FANN; anything else is read as ONNX).
        path: the file, named in diagnostics.
        name: the agent's name (valid, see `agent_name`).

    Returns:
        A valid .af file.

    Raises:
        CheckError: as `import_model`.
    """
    if data.lstrip()[:5] == b"FANN_":
        from .fann import read_fann

        network = read_fann(data, path=path)
    else:
        from .import_onnx import read_onnx

        network = read_onnx(data, path=path)
    return render_imported(network, name=name)


def from_sklearn(estimator: Any, scaler: Any = None, *, name: str = "sklearn-mlp",
                 output: str | Path | None = None) -> AgentFile:
    """Make an agent from a fitted scikit-learn MLP, reading its fitted attributes (never pickle).

    Args:
        estimator: a fitted ``MLPClassifier`` or ``MLPRegressor``, or a ``Pipeline`` of a
            ``StandardScaler`` and one of them.
        scaler: a fitted ``StandardScaler`` applied before the estimator, or None.
        name: the agent's name.
        output: where to write the .af file (atomically), or None to only return it.

    Returns:
        The loaded agent file; ``render_agent_file(result)`` gives its bytes.

    Raises:
        UsageError: AF6070 for an estimator or scaler that is not one of those, or not fitted;
            AF6052 for a bad name; AF6071 when ``output`` cannot be written.
    """
    from .agentfile import load_agent_bytes

    agent_name(None, name)
    estimator, scaler = _split_pipeline(estimator, scaler)
    network = _sklearn_network(estimator, scaler)
    data = render_imported(network, name=name)
    if output is not None:
        from afcore.fsutil import write_file_atomic

        try:
            write_file_atomic(Path(output), data)
        except OSError as exc:
            raise UsageError(f"cannot write `{output}`: {exc.strerror or exc}", code="AF6071",
                             hint="check that the directory exists and is writable") from None
    return load_agent_bytes(data, path=str(output or f"{name}.af"))


def _split_pipeline(estimator: Any, scaler: Any) -> tuple[Any, Any]:
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return estimator, scaler
    if scaler is not None or len(steps) not in (1, 2):
        raise UsageError("a pipeline must be an MLP, or a StandardScaler then an MLP", code="AF6070",
                         hint="pass the MLP and `scaler=` separately")
    return steps[-1][1], steps[0][1] if len(steps) == 2 else None


def _sklearn_network(estimator: Any, scaler: Any) -> ImportedNetwork:
    kind = type(estimator).__name__
    coefs, intercepts = getattr(estimator, "coefs_", None), getattr(estimator, "intercepts_", None)
    if kind not in ("MLPClassifier", "MLPRegressor") or coefs is None or intercepts is None:
        raise UsageError(f"a {kind} is not a fitted MLPClassifier or MLPRegressor", code="AF6070",
                         hint="fit the estimator first; other estimators come in through ONNX (skl2onnx) and `af import`")
    hidden = SKLEARN_ACTIVATIONS[estimator.activation]
    output = SKLEARN_ACTIVATIONS[estimator.out_activation_]
    mean = scale = None
    if scaler is not None:
        if type(scaler).__name__ != "StandardScaler" or not hasattr(scaler, "n_features_in_"):
            raise UsageError(f"the scaler is a {type(scaler).__name__}, not a fitted StandardScaler", code="AF6070",
                             hint="other preprocessing comes in through ONNX (skl2onnx) and `af import`")
        mean = None if scaler.mean_ is None else np.asarray(scaler.mean_, np.float64)
        scale = None if scaler.scale_ is None else np.asarray(scaler.scale_, np.float64)
    classes = getattr(estimator, "classes_", None)
    labels = tuple(_plain(c) for c in classes) if classes is not None and np.ndim(classes) == 1 else None
    return ImportedNetwork(
        weights=tuple(np.asarray(w, np.float64).T for w in coefs),
        biases=tuple(np.asarray(b, np.float64) for b in intercepts),
        hidden_activation=hidden, output_activation=output, mean=mean, scale=scale, labels=labels,
        source=f"scikit-learn {kind}",
    )


def _plain(value: Any) -> Any:
    """A class label as YAML can hold it: a str, an int, or the str of anything else."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return int(value)
    return str(value)


def render_imported(network: ImportedNetwork, *, name: str) -> bytes:
    """Return the bytes of a valid .af file holding ``network`` (weights float32, reference workflows).

    Raises:
        CheckError: AF6053 for a network af cannot declare (an activation it lacks, sizes that do not chain).
        InternalError: when the result does not validate (a bug in af).
    """
    from .agentfile import load_agent_bytes
    from .tensors import encode_tensors
    from .writer import write_container

    _check_declarable(network)
    normalization = network.declarable_normalization()
    if normalization is None:
        weights, biases = network.folded()
    else:
        weights, biases = [np.asarray(w) for w in network.weights], [np.asarray(b) for b in network.biases]
    tensors = {}
    for i, (w, b) in enumerate(zip(weights, biases)):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
    header = _header(network, name, normalization, network.declarable_labels())
    data = write_container(header, [("neural_weights", encode_tensors(tensors))])
    try:
        load_agent_bytes(data, path=f"{name}.af")
    except SourceError as error:
        raise InternalError(f"an imported model gave an invalid .af file: {error.message}") from None
    return data


def _check_declarable(network: ImportedNetwork) -> None:
    if network.hidden_activation not in HIDDEN_ACTIVATIONS:
        fail("AF6053", f"the hidden activation `{network.hidden_activation}` is not one af has",
             f"af's hidden activations: {', '.join(HIDDEN_ACTIVATIONS)}")
    if network.output_activation not in OUTPUT_ACTIVATIONS:
        fail("AF6053", f"the output activation `{network.output_activation}` is not one af has",
             f"af's output activations: {', '.join(OUTPUT_ACTIVATIONS)}")
    width = network.weights[0].shape[1]
    for what, values in (("mean", network.mean), ("scale", network.scale)):
        if values is not None and np.size(values) not in (1, width):
            fail("AF6053", f"the input normalisation has {np.size(values)} {what} values for {width} inputs",
                 "give one value per input (or one for all)")
    for i, (w, b) in enumerate(zip(network.weights, network.biases)):
        if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
            fail("AF6053", f"layer {i} has weight {list(w.shape)} and bias {list(b.shape)}, which do not follow "
                           f"a layer of {width} outputs", "the layers must chain: each one's inputs are the last one's outputs")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            fail("AF6053", f"layer {i} holds NaN or infinite weights", "repair or retrain the model")
        width = w.shape[0]


def _header(network: ImportedNetwork, name: str, normalization: tuple[np.ndarray, np.ndarray] | None,
            labels: tuple[Any, ...] | None) -> str:
    """The header of an imported file, line by line; strings are written as JSON (a subset of YAML's
    double-quoted scalars), so no name or label can break the YAML."""
    sizes = network.sizes
    now = json.dumps(datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    config = {
        "network_type": '"feedforward"',
        "input_size": sizes[0],
        "output_size": sizes[-1],
        "hidden_layers": f"[{', '.join(map(str, sizes[1:-1]))}]",
        "activation_function": json.dumps(network.hidden_activation),
        "output_activation": json.dumps(network.output_activation),
    }
    lines = [
        "# Agent File Format v1.0 (written by `af import`; see docs/interop.md)",
        'version: "1.0"',
        f"name: {json.dumps(name)}",
        f"description: {json.dumps('imported from ' + (network.source or 'another tool'))}",
        'author: "af import"',
        f"created: {now}",
        f"modified: {now}",
        "",
        "neural_config:",
        *(f"  {key}: {value}" for key, value in config.items()),
    ]
    if normalization is not None:
        lines += ["  input_normalization:", f"    mean: {_sequence_of(normalization[0])}",
                  f"    scale: {_sequence_of(normalization[1])}"]
    if labels is not None:
        lines.append(f"  labels: [{', '.join(json.dumps(label) for label in labels)}]")
    return "\n".join(lines) + "\n\n" + _WORKFLOWS


#: the workflows of an imported agent: `af run` works on it as imported
_WORKFLOWS = """\
workflows:
  initialization: [load_neural_network, connect_to_swarm]
  execution: [receive_input, process_neural_network, send_output]
  shutdown: [disconnect_from_swarm]
"""


def _sequence_of(values: Sequence[float]) -> str:
    """Return numbers as a YAML flow sequence that reads back to the same float32 values."""
    return "[" + ", ".join(repr(float(np.float32(v))) for v in values) + "]"
