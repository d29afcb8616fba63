"""`neural_config.input_normalization` and `labels`: valid when optional fields, checked against the sizes,
compiled into both backends (checked against numpy), and kept by `af import`/`af export`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

import afc
import afrt
from afc.compile import compile_agent
from afc.lower_onnx import LABELS_METADATA, network_model_bytes
from afc.tensors import encode_tensors
from afc.writer import write_container
from afcore.errors import CheckError

HEADER = """\
version: "1.0"
name: "normalized"
neural_config:
  input_size: {n_in}
  output_size: {n_out}
  hidden_layers: [6]
  activation_function: "tanh"
  output_activation: "{output}"
{extra}workflows:
  initialization: [load_neural_network, connect_to_swarm]
  execution: [receive_input, process_neural_network, send_output]
"""


def numbers(values) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def agent_bytes(*, n_in=5, n_out=3, output="softmax", mean=None, scale=None, labels=None, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    extra = ""
    if mean is not None:
        extra += f"  input_normalization:\n    mean: {numbers(mean)}\n    scale: {numbers(scale)}\n"
    if labels is not None:
        extra += f"  labels: {json.dumps(labels)}\n"
    tensors = {"layers.0.weight": rng.normal(size=(6, n_in)), "layers.0.bias": rng.normal(size=6),
               "layers.1.weight": rng.normal(size=(n_out, 6)), "layers.1.bias": rng.normal(size=n_out)}
    tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
    return write_container(HEADER.format(n_in=n_in, n_out=n_out, output=output, extra=extra),
                           [("neural_weights", encode_tensors(tensors))])


def numpy_forward(agent: afc.AgentFile, x: np.ndarray) -> np.ndarray:
    """The reference: StandardScaler's arithmetic in float32, then the layers in float64."""
    config = agent.header["neural_config"]
    norm = config.get("input_normalization")
    if norm:
        x = (x - np.float32(norm["mean"])) / np.float32(norm["scale"])
    w = agent.weights
    h = np.tanh(x.astype(np.float64) @ w["layers.0.weight"].T.astype(np.float64) + w["layers.0.bias"])
    z = h @ w["layers.1.weight"].T.astype(np.float64) + w["layers.1.bias"]
    if config["output_activation"] == "sigmoid":
        return 1 / (1 + np.exp(-z))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def normalized():
    rng = np.random.default_rng(1)
    mean, scale = rng.normal(size=5) * 10, rng.uniform(0.1, 20, size=5)
    return afc.load_agent_bytes(agent_bytes(mean=np.float32(mean), scale=np.float32(scale),
                                            labels=["cat", "dog", "eel"]), path="n.af")


class TestFormat:
    def test_the_fields_are_optional_and_valid(self, normalized):
        assert normalized.diagnostics == []
        network = normalized.spec().network
        assert network.normalized and network.labels == ("cat", "dog", "eel")
        assert network.input_mean.dtype == np.float32 and network.input_scale.shape == (5,)
        plain = afc.load_agent_bytes(agent_bytes(), path="plain.af").spec().network
        assert not plain.normalized and plain.labels is None

    @pytest.mark.parametrize("kwargs,code", [
        ({"mean": [0.0] * 4, "scale": [1.0] * 5}, "AF6080"),
        ({"mean": [0.0] * 5, "scale": [1.0] * 6}, "AF6080"),
        ({"labels": ["a", "b"]}, "AF6081"),
        ({"n_out": 1, "output": "sigmoid", "labels": ["yes"]}, "AF6081"),
    ])
    def test_lengths_must_fit_the_network(self, kwargs, code):
        with pytest.raises(CheckError) as caught:
            afc.load_agent_bytes(agent_bytes(**kwargs), path="bad.af")
        diagnostic = caught.value.diagnostics[0]
        assert diagnostic.code == code and diagnostic.span is not None and diagnostic.span.line > 1

    def test_two_labels_for_one_sigmoid_output(self):
        agent = afc.load_agent_bytes(agent_bytes(n_out=1, output="sigmoid", labels=["no", "yes"]), path="b.af")
        assert agent.spec().network.labels == ("no", "yes")

    def test_a_scale_of_zero_is_a_schema_error(self):
        errors = afc.validate_bytes(agent_bytes(mean=[0.0] * 5, scale=[1.0, 0.0, 1.0, 1.0, 1.0]), path="z.af")
        assert [d.code[:3] for d in errors if d.is_error] == ["AF1"]


@pytest.mark.parametrize("backend", ("onnx", "wasm"))
class TestBackends:
    def test_outputs_match_numpy(self, normalized, backend, tmp_path):
        x = (np.random.default_rng(2).normal(size=(67, 5)) * 15).astype(np.float32)
        agent = afrt.load(compile_agent(normalized.spec()), backend=backend, cache_dir=tmp_path)
        np.testing.assert_allclose(agent.infer(x.copy()), numpy_forward(normalized, x), atol=1e-6)

    def test_single_records_and_odd_batches(self, normalized, backend, tmp_path):
        x = (np.random.default_rng(3).normal(size=(7, 5)) * 15).astype(np.float32)
        agent = afrt.load(compile_agent(normalized.spec()), backend=backend, cache_dir=tmp_path)
        rows = np.stack([agent.infer(row.copy()) for row in x])
        np.testing.assert_allclose(rows, numpy_forward(normalized, x), atol=1e-6)


class TestOnnxGraph:
    def test_sub_and_div_before_the_first_layer(self, normalized):
        model = onnx.load_from_string(network_model_bytes(normalized.spec().network))
        assert [n.op_type for n in model.graph.node][:3] == ["Sub", "Div", "Gemm"]
        assert json.loads({p.key: p.value for p in model.metadata_props}[LABELS_METADATA]) == ["cat", "dog", "eel"]
        x = np.random.default_rng(4).normal(size=(9, 5)).astype(np.float32)
        np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"input": x})[0], numpy_forward(normalized, x),
                                   atol=1e-6)

    def test_the_spliced_model_is_the_plain_serialization(self, normalized):
        from afc.lower_onnx import lower_network, model_bytes

        network = normalized.spec().network
        assert network_model_bytes(network) == model_bytes(lower_network(network))


class TestKeptByImportAndExport:
    def test_onnx_round_trip_keeps_normalization_and_labels(self, normalized):
        model = network_model_bytes(normalized.spec().network)
        back = afc.load_agent_bytes(afc.import_model_bytes(model, path="n.onnx", name="back"), path="back.af")
        config, source = back.header["neural_config"], normalized.header["neural_config"]
        assert config["labels"] == source["labels"]
        np.testing.assert_allclose(config["input_normalization"]["mean"], source["input_normalization"]["mean"],
                                   rtol=1e-7)
        np.testing.assert_allclose(config["input_normalization"]["scale"], source["input_normalization"]["scale"],
                                   rtol=1e-6)
        for name, array in normalized.weights.items():
            np.testing.assert_array_equal(back.weights[name], array)

    def test_fann_export_folds_the_normalization(self):
        rng = np.random.default_rng(6)
        normalized = afc.load_agent_bytes(agent_bytes(n_out=2, output="sigmoid", mean=rng.normal(size=5) * 10,
                                                      scale=rng.uniform(0.1, 20, size=5)), path="s.af")
        text = afc.export_fann(normalized.spec().network)
        back = afc.load_agent_bytes(afc.import_model_bytes(text.encode(), path="n.net", name="n"), path="n.af")
        assert "input_normalization" not in back.header["neural_config"]
        x = (np.random.default_rng(5).normal(size=(20, 5)) * 15).astype(np.float32)
        np.testing.assert_allclose(numpy_forward(back, x), numpy_forward(normalized, x), atol=1e-5)


class TestLabelsInRecords:
    """`af run` output lines carry `label` when the network has labels (afrt.jsonl.encode_output), and only then."""

    def run(self, data: bytes, rows: np.ndarray, tmp_path, backend="onnx") -> list[dict]:
        import orjson
        from click.testing import CliRunner

        from af.cli import app

        source = tmp_path / "labelled.af"
        source.write_bytes(data)
        text = "".join(orjson.dumps({"id": i, "input": row.tolist()}).decode() + "\n" for i, row in enumerate(rows))
        result = CliRunner().invoke(app, ["run", str(source), "--backend", backend], input=text)
        assert result.exit_code == 0, result.stderr
        return [orjson.loads(line) for line in result.stdout_bytes.splitlines()]

    @pytest.mark.parametrize("backend", ("onnx", "wasm"))
    def test_the_label_of_the_largest_output(self, normalized, tmp_path, backend):
        from afc.agentfile import render_agent_file

        x = (np.random.default_rng(7).normal(size=(12, 5)) * 15).astype(np.float32)
        records = self.run(render_agent_file(normalized), x, tmp_path, backend)
        expected = [["cat", "dog", "eel"][k] for k in numpy_forward(normalized, x).argmax(axis=1)]
        assert [r["label"] for r in records] == expected

    def test_one_sigmoid_output_picks_by_one_half(self, tmp_path):
        data = agent_bytes(n_out=1, output="sigmoid", labels=["no", "yes"], seed=3)
        x = (np.random.default_rng(8).normal(size=(40, 5)) * 3).astype(np.float32)
        records = self.run(data, x, tmp_path)
        p = numpy_forward(afc.load_agent_bytes(data, path="b.af"), x)[:, 0]
        assert {"no", "yes"} == {r["label"] for r in records}
        assert [r["label"] for r in records] == ["yes" if v >= 0.5 else "no" for v in p]

    def test_no_labels_no_key(self, tmp_path):
        records = self.run(agent_bytes(), np.zeros((2, 5), np.float32), tmp_path)
        assert all(set(r) == {"id", "output", "agent"} for r in records)

    def test_the_manifest_carries_the_labels(self, normalized):
        from afcore.bundle import read_bundle

        manifest = read_bundle(compile_agent(normalized.spec())).manifest
        assert manifest["network"]["labels"] == ["cat", "dog", "eel"]
        plain = read_bundle(compile_agent(afc.load_agent_bytes(agent_bytes(), path="p.af").spec())).manifest
        assert "labels" not in plain["network"]


class TestWasmModule:
    def test_the_input_region_is_left_as_written(self, normalized):
        """The normalised rows go to a buffer of their own: calling infer twice on one input gives one answer."""
        import wasmtime

        from afc.lower_wasm import lower_network

        module = lower_network(normalized.spec().network, max_batch=4)
        store = wasmtime.Store()
        instance = wasmtime.Instance(store, wasmtime.Module(store.engine, module.wasm), [])
        exports = instance.exports(store)
        memory, start = exports["memory"], exports["input_ptr"](store)
        x = (np.random.default_rng(9).normal(size=(3, 5)) * 15).astype("<f4")
        memory.write(store, x.tobytes(), start)
        assert exports["infer"](store, 3) == 0
        assert bytes(memory.read(store, start, start + x.nbytes)) == x.tobytes()
        out = np.frombuffer(bytes(memory.read(store, exports["output_ptr"](store),
                                              exports["output_ptr"](store) + 3 * 3 * 4)), "<f4").reshape(3, 3)
        assert exports["infer"](store, 3) == 0
        again = np.frombuffer(bytes(memory.read(store, exports["output_ptr"](store),
                                                exports["output_ptr"](store) + 3 * 3 * 4)), "<f4").reshape(3, 3)
        np.testing.assert_array_equal(out, again)
        np.testing.assert_allclose(out, numpy_forward(normalized, x), atol=1e-6)


class TestTraining:
    def test_training_sees_what_inference_runs(self):
        """A normalised network trained by afc.train fits the data through af's own forward pass (which
        normalises): trained on the raw records instead, the weights would be wrong for what inference runs."""
        from afc.datasets import dataset_from_tensors
        from afc.train import TrainOptions, train_network

        rng = np.random.default_rng(10)
        mean, scale = np.float32([100, -50, 3, 0, 7]), np.float32([20, 5, 0.1, 1, 3])
        agent = afc.load_agent_bytes(agent_bytes(n_out=1, output="sigmoid", mean=mean, scale=scale), path="t.af")
        x = (rng.normal(size=(200, 5)) * scale + mean).astype(np.float32)
        y = (((x - mean) / scale)[:, :2].sum(axis=1, keepdims=True) > 0).astype(np.float32)
        dataset = dataset_from_tensors({"inputs": x, "targets": y}, source="mem", sha256="0" * 64,
                                       input_size=5, output_size=1)
        tensors, result = train_network(agent.spec().network, dataset,
                                         options=TrainOptions(epochs=30, optimizer="adam", learning_rate=0.05, seed=0))
        trained = {**agent.weights, **tensors}
        p = np.clip(numpy_forward(_with_weights(agent, trained), x)[:, 0], 1e-7, 1 - 1e-7)
        loss = float(-np.mean(y[:, 0] * np.log(p) + (1 - y[:, 0]) * np.log(1 - p)))
        accuracy = float(np.mean((p >= 0.5) == (y[:, 0] == 1)))
        assert loss < 0.1 and accuracy >= 0.97 and result.loss < 0.1


def _with_weights(agent, weights):
    """A stand-in for numpy_forward: the agent's header with other weights."""

    class Agent:
        header = agent.header

    Agent.weights = weights
    return Agent
