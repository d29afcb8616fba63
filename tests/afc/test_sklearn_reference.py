"""External reference: scikit-learn's MLPClassifier, packed into an .af, compiled, run by both backends.

The network is trained by scikit-learn, written with the format layer (`afc.writer`, `afc.tensors`),
compiled by `afc.compile`, and both compiled models must pick the class `predict()` picks for every
one of the 1797 digits.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

import afc
from afc.compile import compile_file
from afc.tensors import encode_tensors
from afc.writer import write_container
from afcore.bundle import read_bundle

HEADER = """\
version: "1.0"
name: "sklearn-digits"
neural_config:
  network_type: "feedforward"
  input_size: 64
  output_size: 10
  hidden_layers: [32, 16]
  activation_function: "relu"
  output_activation: "softmax"
workflows:
  initialization: [load_neural_network]
  execution: [receive_input, process_neural_network, send_output]
  shutdown: [cleanup_resources]
"""


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target


@pytest.fixture(scope="module")
def classifier(digits):
    x, y = digits
    model = MLPClassifier(hidden_layer_sizes=(32, 16), activation="relu", max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


@pytest.fixture(scope="module")
def bundle(classifier, tmp_path_factory):
    tensors = {}
    for i, (coef, intercept) in enumerate(zip(classifier.coefs_, classifier.intercepts_)):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(coef.T, dtype=np.float32)  # sklearn stores [in, out]
        tensors[f"layers.{i}.bias"] = intercept.astype(np.float32)
    directory = tmp_path_factory.mktemp("sklearn")
    source = directory / "digits.af"
    source.write_bytes(write_container(HEADER, [("neural_weights", encode_tensors(tensors))]))
    assert afc.validate(source) == []
    return read_bundle(compile_file(source))


class TestSklearnReference:
    def test_classifier_is_a_real_reference(self, classifier, digits):
        x, y = digits
        assert classifier.score(x, y) > 0.95

    def test_onnx_argmax_equals_predict(self, bundle, classifier, digits):
        x, _ = digits
        session = ort.InferenceSession(bundle.members["model.onnx"], providers=["CPUExecutionProvider"])
        probabilities = session.run(["output"], {"input": x})[0]
        np.testing.assert_array_equal(probabilities.argmax(axis=1), classifier.predict(x))
        np.testing.assert_allclose(probabilities, classifier.predict_proba(x), atol=1e-5)

    def test_wasm_argmax_equals_predict(self, bundle, classifier, digits, wasm_runner):
        x, _ = digits
        probabilities = wasm_runner(bundle.members["model.wasm"], x, 10)
        assert probabilities.shape == (1797, 10)
        np.testing.assert_array_equal(probabilities.argmax(axis=1), classifier.predict(x))
        np.testing.assert_allclose(probabilities, classifier.predict_proba(x), atol=1e-5)
