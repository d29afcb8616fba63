"""Rebuild the example agents reproducibly (`make examples`).

- `classification-agent.af`: the reference header of issue 2, unchanged, with weights of a
  scikit-learn MLPClassifier (784-128-64-32-10, relu) trained on the bundled digits data upsampled
  from 8x8 to 28x28; `classification-inputs.jsonl` and `classification-labels.json` hold the
  held-out records and their true labels.
- `xor.af`: a 2-4-1 network (tanh, sigmoid output) trained with numpy, training data packed.

Every random choice has a fixed seed, so running this twice gives the same files. Each network is
checked against an independent numpy forward pass before it is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from afc.tensors import encode_tensors
from afc.writer import write_container
from afcore.fsutil import write_file_atomic

HERE = Path(__file__).resolve().parent
#: fixed seed for every random choice
SEED = 0
#: accuracy the digits network must reach on the held-out split
MIN_ACCURACY = 0.95
#: above this size the training data is left out of classification-agent.af
MAX_FILE_BYTES = 3_000_000

#: the reference header of issue 2, byte for byte
CLASSIFICATION_HEADER = """\
# Agent File Format v1.0
version: "1.0"
name: "classification-agent"
description: "Neural network for image classification"
author: "Neural Swarm Team"
created: "2025-07-13T19:24:55.000Z"
modified: "2025-07-13T19:24:55.000Z"

runtime:
  rust_version: "1.70.0"
  dependencies:
    tokio: "1.0"
    fann: "0.3"
    serde: "1.0"
  features: ["neural", "async"]

neural_config:
  network_type: "feedforward"
  input_size: 784
  output_size: 10
  hidden_layers: [128, 64, 32]
  activation_function: "relu"
  learning_rate: 0.001

resources:
  limits:
    memory_mb: 512
    cpu_cores: 1.0
    disk_mb: 100
    network_bandwidth_mbps: 10
  requirements:
    minimum_memory_mb: 128
    minimum_cpu_cores: 0.5

workflows:
  initialization:
    - load_neural_network
    - initialize_memory
    - connect_to_swarm
    - register_capabilities
  execution:
    - receive_input
    - process_neural_network
    - update_memory
    - send_output
  shutdown:
    - save_state
    - disconnect_from_swarm
    - cleanup_resources
"""

XOR_HEADER = """\
# Agent File Format v1.0
version: "1.0"
name: "xor-agent"
description: "Two-input XOR: a 2-4-1 network with tanh hidden units and a sigmoid output"
author: "Neural Swarm Team"
created: "2025-07-13T19:24:55.000Z"
modified: "2025-07-13T19:24:55.000Z"

runtime:
  rust_version: "1.70.0"
  dependencies:
    tokio: "1.0"
    fann: "0.3"
    serde: "1.0"
  features: ["neural", "async"]

neural_config:
  network_type: "feedforward"
  input_size: 2
  output_size: 1
  hidden_layers: [4]
  activation_function: "tanh"
  output_activation: "sigmoid"
  learning_rate: 0.5

resources:
  limits:
    memory_mb: 64
    cpu_cores: 0.5
    disk_mb: 10
    network_bandwidth_mbps: 1
  requirements:
    minimum_memory_mb: 16
    minimum_cpu_cores: 0.1

workflows:
  initialization:
    - load_neural_network
    - initialize_memory
    - connect_to_swarm
    - register_capabilities
  execution:
    - receive_input
    - process_neural_network
    - update_memory
    - send_output
  shutdown:
    - save_state
    - disconnect_from_swarm
    - cleanup_resources
"""


def load_digits_28x28() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's digits upsampled to 28x28, as float32 rows in [0, 1], and their labels."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.stack([zoom(image / 16.0, 3.5, order=1) for image in digits.images])
    return np.clip(images, 0.0, 1.0).reshape(len(images), 784).astype(np.float32), digits.target


def forward_relu_linear(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Forward pass in float64 with relu hidden layers and a linear output (the header's network)."""
    h = x.astype(np.float64)
    for i, (weight, bias) in enumerate(layers):
        h = h @ weight.astype(np.float64).T + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def train_digits(x_train: np.ndarray, y_train: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train the 784-128-64-32-10 relu MLP; return its layers as ([out, in] weight, [out] bias)."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(128, 64, 32), activation="relu", max_iter=300, random_state=SEED)
    clf.fit(x_train, y_train)
    layers = [
        (np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32))
        for w, b in zip(clf.coefs_, clf.intercepts_)
    ]
    # Our float64 pass must agree with scikit-learn's own prediction, or the export is wrong.
    ours = clf.classes_[forward_relu_linear(layers, x_train).argmax(axis=1)]
    if not np.array_equal(ours, clf.predict(x_train)):
        raise SystemExit("exported digits weights disagree with MLPClassifier.predict")
    return layers


def layer_tensors(layers: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Name layers as the format wants: ``layers.<i>.weight`` [out, in] and ``layers.<i>.bias`` [out]."""
    tensors = {}
    for i, (weight, bias) in enumerate(layers):
        tensors[f"layers.{i}.weight"] = weight
        tensors[f"layers.{i}.bias"] = bias
    return tensors


def build_classification() -> None:
    """Write classification-agent.af, classification-inputs.jsonl and classification-labels.json."""
    from sklearn.model_selection import train_test_split

    x, y = load_digits_28x28()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    layers = train_digits(x_train, y_train)
    x_rounded = np.round(x_test.astype(np.float64), 4)
    accuracy = float((forward_relu_linear(layers, x_rounded).argmax(axis=1) == y_test).mean())
    print(f"classification-agent: held-out accuracy {accuracy:.4f} on {len(y_test)} records")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"accuracy {accuracy:.4f} is below {MIN_ACCURACY}")
    weights = encode_tensors(layer_tensors(layers))
    training = encode_tensors({"inputs": x_train, "targets": np.eye(10, dtype=np.float32)[y_train]})
    data = write_container(CLASSIFICATION_HEADER, [("neural_weights", weights), ("training_data", training)])
    if len(data) > MAX_FILE_BYTES:
        print(f"classification-agent: training data left out ({len(data)} bytes with it)")
        data = write_container(CLASSIFICATION_HEADER, [("neural_weights", weights)])
    write_checked(HERE / "classification-agent.af", data)
    write_records(x_rounded, y_test)


def write_records(x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Write the held-out inputs as JSONL and their true labels as JSON, with ids digit-0001, ..."""
    ids = [f"digit-{i + 1:04d}" for i in range(len(y_test))]
    lines = [json.dumps({"id": rid, "input": [round(float(v), 4) for v in row]}) for rid, row in zip(ids, x_test)]
    write_file_atomic(HERE / "classification-inputs.jsonl", ("\n".join(lines) + "\n").encode())
    labels = {rid: int(label) for rid, label in zip(ids, y_test)}
    write_file_atomic(HERE / "classification-labels.json", (json.dumps(labels, indent=1) + "\n").encode())


def train_xor() -> list[tuple[np.ndarray, np.ndarray]]:
    """Train 2-4-1 (tanh, sigmoid) on XOR with full-batch gradient descent on cross-entropy."""
    rng = np.random.default_rng(SEED)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    t = np.array([[0], [1], [1], [0]], dtype=np.float64)
    w1, b1 = rng.normal(0, 1, (4, 2)), np.zeros(4)
    w2, b2 = rng.normal(0, 1, (1, 4)), np.zeros(1)
    for _ in range(5000):
        h = np.tanh(x @ w1.T + b1)
        y = 1 / (1 + np.exp(-(h @ w2.T + b2)))
        dz2 = (y - t) / len(x)  # d(cross-entropy)/d(logit) for a sigmoid output
        dh = (dz2 @ w2) * (1 - h**2)
        w2 -= 0.5 * dz2.T @ h
        b2 -= 0.5 * dz2.sum(0)
        w1 -= 0.5 * dh.T @ x
        b1 -= 0.5 * dh.sum(0)
    return [(w1.astype(np.float32), b1.astype(np.float32)), (w2.astype(np.float32), b2.astype(np.float32))]


def build_xor() -> None:
    """Write xor.af after checking that the float32 weights solve XOR."""
    layers = train_xor()
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    t = np.array([[0], [1], [1], [0]], dtype=np.float32)
    (w1, b1), (w2, b2) = layers
    y = 1 / (1 + np.exp(-(np.tanh(x.astype(np.float64) @ w1.T + b1) @ w2.T + b2)))
    print(f"xor: outputs {np.round(y.ravel(), 3).tolist()} for targets {t.ravel().tolist()}")
    if not np.all(np.abs(y - t) < 0.1):
        raise SystemExit("the XOR network does not solve XOR")
    weights = encode_tensors(layer_tensors(layers))
    training = encode_tensors({"inputs": x, "targets": t})
    write_checked(HERE / "xor.af", write_container(XOR_HEADER, [("neural_weights", weights), ("training_data", training)]))


def write_checked(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` after loading it back with every check `af validate` makes."""
    from afc.agentfile import load_agent_bytes

    load_agent_bytes(data, path=str(path))
    write_file_atomic(path, data)
    print(f"wrote {path.relative_to(HERE.parent)} ({len(data)} bytes)")


def main() -> int:
    """Build every example; return the process exit code."""
    build_classification()
    build_xor()
    return 0


if __name__ == "__main__":
    sys.exit(main())
