"""FANN .net files both ways, checked against the real libfann 2.2.

The libfann side runs in the system ``python3`` (``tests/interop/fann_side.py``): Debian's
python3-fann2 installs ``fann2`` into that interpreter's dist-packages, and a venv does not see
them (adding that directory to the venv's path would also bring in the system's other packages).
Outside CI those tests skip, naming the packages; with ``CI=true`` a missing package fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import afc
import afrt
from afc.compile import compile_agent
from afc.fann import read_fann, write_fann
from afcore.errors import CheckError, LoweringError

#: the interpreter python3-fann2 installs into
SYSTEM_PYTHON = "/usr/bin/python3"
FANN_SIDE = Path(__file__).resolve().parents[1] / "interop" / "fann_side.py"
PACKAGES = "the Debian packages libfann-dev and python3-fann2 (apt-get install -y libfann-dev python3-fann2)"
BACKENDS = ("onnx", "wasm")


def _fann_available() -> bool:
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "import fann2.libfann"], capture_output=True,
                              timeout=60).returncode == 0
    except OSError:
        return False


@pytest.fixture(scope="module")
def libfann():
    """Run a request on libfann (via fann2 in the system python); skip, or fail in CI, without it."""
    if not _fann_available():
        message = f"needs {PACKAGES}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and libfann is missing: {message}")
        pytest.skip(message)

    def call(**request):
        done = subprocess.run([SYSTEM_PYTHON, str(FANN_SIDE)], input=json.dumps(request), capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return np.array(json.loads(done.stdout)["outputs"])

    return call


def run_agent(data: bytes, x: np.ndarray, backend: str, cache) -> np.ndarray:
    spec = afc.load_agent_bytes(data, path="imported.af").spec()
    return afrt.load(compile_agent(spec), backend=backend, cache_dir=cache).infer(x.astype(np.float32))


def write_data(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A FANN .data file: `N num_input num_output`, then each input line and its output line."""
    lines = [f"{len(x)} {x.shape[1]} {y.shape[1]}"]
    for row, target in zip(x, y):
        lines += [" ".join(f"{v:.9g}" for v in row), " ".join(f"{v:.9g}" for v in target)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, size=(24, 3))
    y = np.stack([(x[:, 0] * x[:, 1] > 0) * 0.8 + 0.1, (x[:, 2] > 0) * 0.6 + 0.2], axis=1)
    return x, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hidden,output,steepness", [("SIGMOID_SYMMETRIC", "SIGMOID", 0.7),
                                                     ("SIGMOID", "LINEAR", 0.35), ("LINEAR", "SIGMOID", 1.3)])
class TestTrainedByLibfann:
    def test_imported_network_gives_fann_runs_outputs(self, libfann, samples, backend, hidden, output, steepness,
                                                      tmp_path):
        x, y = samples
        net = tmp_path / "trained.net"
        fann_out = libfann(op="train", data=str(write_data(tmp_path / "train.data", x, y)), layers=[3, 5, 4, 2],
                           hidden=hidden, output=output, steepness=steepness, epochs=40, save=str(net),
                           inputs=x.tolist())
        assert np.ptp(fann_out) > 0.1  # not saturated: a wrong factor would show
        data = afc.import_model(net)
        np.testing.assert_allclose(run_agent(data, x, backend, tmp_path), fann_out, atol=1e-5)


@pytest.mark.parametrize("hidden,output", [("tanh", "sigmoid"), ("sigmoid", "linear"), ("linear", "sigmoid")])
class TestExportedToLibfann:
    def test_libfann_gives_afs_outputs(self, libfann, make_network, hidden, output, tmp_path):
        network = make_network([4, 6, 5, 3], hidden, output, seed=3)
        net = tmp_path / "exported.net"
        net.write_text(write_fann(network))
        x = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
        ours = run_agent(afc.import_model_bytes(net.read_bytes(), path=str(net), name="x"), x, "onnx", tmp_path)
        theirs = libfann(op="run", net=str(net), inputs=x.astype(np.float64).tolist())
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
        reference = _numpy_forward(network, x)
        np.testing.assert_allclose(theirs, reference, atol=1e-5)


def _numpy_forward(network, x):
    act = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "linear": lambda z: z}
    h = x.astype(np.float64)
    for i, layer in enumerate(network.layers):
        name = network.output_activation if i == len(network.layers) - 1 else network.hidden_activation
        h = act[name](h @ layer.weight.astype(np.float64).T + layer.bias)
    return h


class TestFormat:
    """What needs no libfann: the text both ways, and the refusals."""

    def test_write_then_read_gives_the_weights(self, make_network):
        network = make_network([3, 4, 2], "tanh", "sigmoid", seed=1)
        back = read_fann(write_fann(network).encode(), path="n.net")
        assert (back.hidden_activation, back.output_activation, back.sizes) == ("tanh", "sigmoid", [3, 4, 2])
        for layer, weight, bias in zip(network.layers, back.weights, back.biases):
            np.testing.assert_array_equal(weight, layer.weight.astype(np.float64))
            np.testing.assert_array_equal(bias, layer.bias.astype(np.float64))

    def test_layer_sizes_count_bias_neurons(self, make_network):
        text = write_fann(make_network([3, 4, 2], "sigmoid", "linear"))
        assert "\nlayer_sizes=4 5 3 \n" in text and text.startswith("FANN_FLO_2.1\nnum_layers=3\n")

    @pytest.mark.parametrize("hidden,output", [("relu", "sigmoid"), ("gelu", "linear"), ("tanh", "softmax")])
    def test_activations_libfann_lacks_are_refused(self, make_network, hidden, output):
        with pytest.raises(LoweringError) as caught:
            write_fann(make_network([3, 4, 2], hidden, output))
        assert caught.value.code == "AF6065"
        assert (output if output == "softmax" else hidden) in caught.value.message

    @pytest.mark.parametrize("edit,code,words", [
        (lambda t: t.replace("FANN_FLO_2.1", "FANN_FIX_2.0"), "AF6060", "FANN_FIX_2.0"),
        (lambda t: t.replace("network_type=0", "network_type=1"), "AF6061", "shortcut"),
        (lambda t: t.replace("(4, 5, 1.0", "(4, 7, 1.0", 1), "AF6061", "FANN_GAUSSIAN"),
        (lambda t: t.replace("layer_sizes=4 5 3", "layer_sizes=4 6 3"), "AF6060", "layer_sizes"),
        (lambda t: t.replace("(0, -", "(x, -", 1), "AF6060", "not a number"),
    ])
    def test_files_af_cannot_map(self, make_network, edit, code, words):
        text = edit(write_fann(make_network([3, 4, 2], "tanh", "sigmoid")))
        with pytest.raises(CheckError) as caught:
            read_fann(text.encode(), path="bad.net")
        diagnostic = caught.value.diagnostics[0]
        assert diagnostic.code == code and words in diagnostic.message

    def test_a_symmetric_output_is_refused(self, make_network):
        text = write_fann(make_network([3, 4, 2], "tanh", "linear"))
        head, _, tail = text.partition("neurons")
        tail = tail.replace("(5, 0, 1.0", "(5, 5, 1.0")
        with pytest.raises(CheckError) as caught:
            read_fann((head + "neurons" + tail).encode(), path="tanh-out.net")
        assert caught.value.diagnostics[0].code == "AF6061"
