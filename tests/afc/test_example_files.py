"""The committed examples hold what issue 2 asks for, checked with numpy float64 and the safetensors library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.numpy

from afc.reader import read_container

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: the reference header of issue 2, which classification-agent.af must carry unchanged
ISSUE_HEADER = (Path(__file__).resolve().parents[1] / "data" / "reference-header.yaml").read_text(encoding="utf-8")


def load(name: str):
    path = EXAMPLES / name
    container = read_container(path.read_bytes(), path=str(path))
    tensors = {s.name: safetensors.numpy.load(s.payload) for s in container.sections}
    return container, tensors


def forward(weights: dict[str, np.ndarray], x: np.ndarray, hidden, output) -> np.ndarray:
    h = np.asarray(x, dtype=np.float64)
    count = len(weights) // 2
    for i in range(count):
        h = h @ weights[f"layers.{i}.weight"].astype(np.float64).T + weights[f"layers.{i}.bias"]
        h = hidden(h) if i < count - 1 else output(h)
    return h


class TestClassificationAgent:
    def test_header_is_the_issue_header_unchanged(self):
        container, _ = load("classification-agent.af")
        assert container.header_text == ISSUE_HEADER

    def test_layer_shapes_are_out_by_in(self):
        _, tensors = load("classification-agent.af")
        shapes = {k: v.shape for k, v in tensors["neural_weights"].items()}
        sizes = [784, 128, 64, 32, 10]
        assert shapes == {
            **{f"layers.{i}.weight": (sizes[i + 1], sizes[i]) for i in range(4)},
            **{f"layers.{i}.bias": (sizes[i + 1],) for i in range(4)},
        }

    def test_held_out_accuracy_is_at_least_95_percent(self):
        _, tensors = load("classification-agent.af")
        records = [json.loads(line) for line in (EXAMPLES / "classification-inputs.jsonl").read_text().splitlines()]
        labels = json.loads((EXAMPLES / "classification-labels.json").read_text())
        assert [r["id"] for r in records] == sorted(labels) and records[0]["id"] == "digit-0001"
        x = np.array([r["input"] for r in records])
        assert x.shape == (len(records), 784) and 0.0 <= x.min() and x.max() <= 1.0
        assert np.array_equal(x, np.round(x, 4))
        logits = forward(tensors["neural_weights"], x, lambda h: np.maximum(h, 0.0), lambda h: h)
        truth = np.array([labels[r["id"]] for r in records])
        assert (logits.argmax(axis=1) == truth).mean() >= 0.95

    def test_training_data_targets_are_one_hot(self):
        _, tensors = load("classification-agent.af")
        training = tensors["training_data"]
        assert training["inputs"].shape[1] == 784 and training["targets"].shape == (len(training["inputs"]), 10)
        assert np.array_equal(training["targets"].sum(axis=1), np.ones(len(training["targets"])))


class TestXor:
    def test_weights_solve_xor(self):
        container, tensors = load("xor.af")
        assert "output_activation: \"sigmoid\"" in container.header_text
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
        y = forward(tensors["neural_weights"], x, np.tanh, lambda h: 1 / (1 + np.exp(-h)))
        assert np.all(np.abs(y.ravel() - [0, 1, 1, 0]) < 0.1)

    def test_training_data_holds_the_four_cases(self):
        _, tensors = load("xor.af")
        assert np.array_equal(tensors["training_data"]["inputs"], [[0, 0], [0, 1], [1, 0], [1, 1]])
        assert np.array_equal(tensors["training_data"]["targets"], [[0], [1], [1], [0]])
