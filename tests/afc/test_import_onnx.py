"""`af import` of ONNX MLPs and `af.from_sklearn`: the imported agent, compiled and run by both backends,
gives the source's outputs within 1e-5; references are independent of af (scikit-learn's predict_proba /
predict, onnx's ReferenceEvaluator on the source model)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import af
import afc
import afrt
from afc.agentfile import render_agent_file
from afc.compile import compile_agent
from afcore.errors import CheckError, UsageError

skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is in the dev extra: pip install -e '.[dev]'")

BACKENDS = ("onnx", "wasm")


def run_agent(data: bytes, x: np.ndarray, backend: str, cache) -> np.ndarray:
    """Compile an .af (bytes) in memory and run it with af's runtime on one backend."""
    spec = afc.load_agent_bytes(data, path="imported.af").spec()
    agent = afrt.load(compile_agent(spec), backend=backend, cache_dir=cache)
    return agent.infer(np.ascontiguousarray(x, dtype=np.float32))


def import_bytes(model: onnx.ModelProto, name: str = "imported") -> bytes:
    return afc.import_model_bytes(model.SerializeToString(), path="model.onnx", name=name)


def codes(error: CheckError) -> list[str]:
    return [d.code for d in error.diagnostics]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(120, 5)) * [1, 3, 10, 0.5, 2] + [0, 5, -20, 1, 3]).astype(np.float32)
    classes = (x[:, 0] > 0).astype(int) + (x[:, 1] > 5) + (x[:, 2] > -20)
    return x, classes


def fitted(estimator, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(x, y)


def to_onnx(estimator, x):
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skl2onnx.to_onnx(estimator, x[:1], options=options, target_opset=17)


@pytest.mark.parametrize("backend", BACKENDS)
class TestSkl2onnx:
    def test_scaler_and_classifier(self, data, backend, tmp_path):
        x, y = data
        pipe = fitted(make_pipeline(StandardScaler(), MLPClassifier((8, 6), activation="tanh", max_iter=400,
                                                                    random_state=0)), x, y)
        model = to_onnx(pipe, x)
        assert "Scaler" in [n.op_type for n in model.graph.node]
        out = run_agent(import_bytes(model), x, backend, tmp_path)
        np.testing.assert_allclose(out, pipe.predict_proba(x), atol=1e-5)
        # the skl2onnx model itself, run by onnx's pure-Python evaluator, agrees as well
        reference = ReferenceEvaluator(model).run(["probabilities"], {"X": x})[0]
        np.testing.assert_allclose(out, reference, atol=1e-5)

    def test_binary_classifier_gives_the_positive_class(self, data, backend, tmp_path):
        x, _ = data
        y = np.where(x[:, 1] > 5, "big", "small")
        clf = fitted(MLPClassifier((6,), activation="logistic", max_iter=300, random_state=1), x / 10, y)
        out = run_agent(import_bytes(to_onnx(clf, x / 10)), x / 10, backend, tmp_path)
        assert out.shape == (len(x), 1)
        np.testing.assert_allclose(out[:, 0], clf.predict_proba(x / 10)[:, 1], atol=1e-5)

    def test_regressor(self, data, backend, tmp_path):
        x, _ = data
        targets = np.stack([x[:, 0] * 2 + x[:, 3], np.sin(x[:, 1])], axis=1)
        reg = fitted(MLPRegressor(hidden_layer_sizes=(10, 4), activation="relu", max_iter=300, random_state=2), x / 10, targets)
        out = run_agent(import_bytes(to_onnx(reg, x / 10)), x / 10, backend, tmp_path)
        np.testing.assert_allclose(out, reg.predict(x / 10), atol=1e-5)


def initializer(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def handmade(nodes, initializers, inputs=("x",), output="y", width=4) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "handmade",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]) for name in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", "outputs"])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def handmade_mlp() -> onnx.ModelProto:
    """Normalisation as Sub/Div, a Gemm (transB=1, alpha, beta), a MatMul+Add, a Gemm (transB=0), softmax."""
    rng = np.random.default_rng(3)
    return handmade(
        [helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
         helper.make_node("Div", ["centred", "std"], ["scaled"], name="scale"),
         helper.make_node("Gemm", ["scaled", "w0", "b0"], ["h0"], name="fc0", transB=1, alpha=0.5, beta=2.0),
         helper.make_node("LeakyRelu", ["h0"], ["a0"], name="act0", alpha=0.01),
         helper.make_node("MatMul", ["a0", "w1"], ["m1"], name="fc1.matmul"),
         helper.make_node("Add", ["m1", "b1"], ["h1"], name="fc1.add"),
         helper.make_node("LeakyRelu", ["h1"], ["a1"], name="act1", alpha=0.01),
         helper.make_node("Gemm", ["a1", "w2", "b2"], ["logits"], name="fc2"),
         helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)],
        [initializer("mean", rng.normal(size=4)), initializer("std", rng.uniform(0.5, 2, size=4)),
         initializer("w0", rng.normal(size=(7, 4))), initializer("b0", rng.normal(size=7)),
         initializer("w1", rng.normal(size=(7, 5))), initializer("b1", rng.normal(size=(1, 5))),
         initializer("w2", rng.normal(size=(5, 3))), initializer("b2", rng.normal(size=3))])


def torch_style_mlp(activation: str = "Relu", last: str | None = "Sigmoid") -> onnx.ModelProto:
    """What torch.onnx.export writes for nn.Sequential(Linear, act, Linear, act, Linear[, Sigmoid])."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Gemm", ["input", "0.weight", "0.bias"], ["/0/Gemm_output_0"], name="/0/Gemm",
                              alpha=1.0, beta=1.0, transB=1),
             helper.make_node(activation, ["/0/Gemm_output_0"], ["/1/out"], name=f"/1/{activation}"),
             helper.make_node("Gemm", ["/1/out", "2.weight", "2.bias"], ["/2/Gemm_output_0"], name="/2/Gemm",
                              alpha=1.0, beta=1.0, transB=1),
             helper.make_node(activation, ["/2/Gemm_output_0"], ["/3/out"], name=f"/3/{activation}"),
             helper.make_node("Gemm", ["/3/out", "4.weight", "4.bias"], ["logits" if last else "output"],
                              name="/4/Gemm", alpha=1.0, beta=1.0, transB=1)]
    if last:
        nodes.append(helper.make_node(last, ["logits"], ["output"], name=f"/5/{last}"))
    inits = [initializer("0.weight", rng.normal(size=(6, 4))), initializer("0.bias", rng.normal(size=6)),
             initializer("2.weight", rng.normal(size=(6, 6))), initializer("2.bias", rng.normal(size=6)),
             initializer("4.weight", rng.normal(size=(2, 6))), initializer("4.bias", rng.normal(size=2))]
    return handmade(nodes, inits, inputs=("input",), output="output")


@pytest.mark.parametrize("backend", BACKENDS)
class TestHandmade:
    def test_gemm_matmul_add_and_normalisation(self, backend, tmp_path):
        model = handmade_mlp()
        x = np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32)
        out = run_agent(import_bytes(model), x, backend, tmp_path)
        np.testing.assert_allclose(out, ReferenceEvaluator(model).run(None, {"x": x})[0], atol=1e-5)

    @pytest.mark.parametrize("activation,last", [("Relu", "Sigmoid"), ("Tanh", None), ("Elu", "Softmax"),
                                                 ("Softplus", None), ("Sigmoid", "Sigmoid")])
    def test_torch_style(self, backend, activation, last, tmp_path):
        model = torch_style_mlp(activation, last)
        x = np.random.default_rng(6).normal(size=(40, 4)).astype(np.float32)
        out = run_agent(import_bytes(model), x, backend, tmp_path)
        np.testing.assert_allclose(out, ReferenceEvaluator(model).run(None, {"input": x})[0], atol=1e-5)


class TestExporterVariants:
    def test_flatten_and_a_transposed_constant_weight(self, tmp_path):
        """nn.Flatten in front, and a weight stored [in, out] then transposed in the graph."""
        model = torch_style_mlp("Relu", None)
        graph = model.graph
        first = graph.node[0]
        first.input[0] = "flat"
        graph.node.insert(0, helper.make_node("Flatten", ["input"], ["flat"], name="/flatten/Flatten", axis=1))
        weight = next(t for t in graph.initializer if t.name == "2.weight")
        stored = numpy_helper.to_array(weight).T.copy()
        weight.CopyFrom(numpy_helper.from_array(stored, "2.weight.t"))
        graph.node.insert(1, helper.make_node("Transpose", ["2.weight.t"], ["2.weight"], name="/2/Transpose",
                                              perm=[1, 0]))
        onnx.checker.check_model(model, full_check=True)
        x = np.random.default_rng(8).normal(size=(10, 4)).astype(np.float32)
        out = run_agent(import_bytes(model), x, "onnx", tmp_path)
        np.testing.assert_allclose(out, ReferenceEvaluator(model).run(None, {"input": x})[0], atol=1e-5)

    def test_external_data_is_refused(self):
        model = torch_style_mlp()
        tensor = model.graph.initializer[0]
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="weights.bin")
        error = refused(model)
        assert codes(error) == ["AF6055"] and "external" in error.diagnostics[0].message


class TestHeader:
    def test_the_file_declares_the_network(self):
        agent = afc.load_agent_bytes(import_bytes(torch_style_mlp("Tanh", "Softmax"), name="torch-net"), path="t.af")
        config = agent.header["neural_config"]
        assert agent.header["name"] == "torch-net"
        assert (config["input_size"], config["hidden_layers"], config["output_size"]) == (4, [6, 6], 2)
        assert (config["activation_function"], config["output_activation"]) == ("tanh", "softmax")
        assert agent.diagnostics == []


def refused(model: onnx.ModelProto) -> CheckError:
    with pytest.raises(CheckError) as caught:
        import_bytes(model)
    return caught.value


class TestRefusals:
    def test_a_node_af_cannot_map_is_named(self):
        model = torch_style_mlp()
        model.graph.node.append(helper.make_node("Mul", ["output", "output"], ["squared"], name="square_it"))
        model.graph.output.append(helper.make_tensor_value_info("squared", TensorProto.FLOAT, None))
        error = refused(model)
        assert codes(error) == ["AF6054"] and "`square_it` (Mul)" in error.diagnostics[0].message

    def test_a_convolution_is_named(self):
        rng = np.random.default_rng(0)
        graph = helper.make_graph([helper.make_node("Conv", ["x", "k"], ["y"], name="conv1")], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [initializer("k", rng.normal(size=(1, 1, 1)))])
        model = helper.make_model(graph)
        error = refused(model)
        assert codes(error) == ["AF6054"] and "`conv1` (Conv)" in error.diagnostics[0].message

    def test_an_output_activation_af_lacks(self):
        error = refused(torch_style_mlp("Relu", "Relu"))
        assert codes(error) == ["AF6054"] and "`/5/Relu` (Relu)" in error.diagnostics[0].message

    def test_hidden_activations_that_differ(self):
        model = torch_style_mlp("Relu", None)
        model.graph.node[3].op_type = "Tanh"
        error = refused(model)
        assert codes(error) == ["AF6056"] and "`/3/Relu` (Tanh)" in error.diagnostics[0].message

    def test_a_weight_that_is_an_input(self):
        model = torch_style_mlp()
        model.graph.input.append(helper.make_tensor_value_info("2.weight", TensorProto.FLOAT, [6, 6]))
        del model.graph.initializer[2]
        assert codes(refused(model)) == ["AF6055"]

    def test_a_branch(self):
        model = torch_style_mlp("Relu", None)
        model.graph.node.append(helper.make_node("Relu", ["/0/Gemm_output_0"], ["side"], name="side"))
        model.graph.output.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
        assert codes(refused(model)) == ["AF6055"]

    def test_leaky_relu_with_another_slope(self):
        model = torch_style_mlp("LeakyRelu", None)
        model.graph.node[1].attribute.append(helper.make_attribute("alpha", 0.2))
        error = refused(model)
        assert codes(error) == ["AF6054"] and "alpha" in error.diagnostics[0].message

    def test_bytes_that_are_no_model(self):
        with pytest.raises(CheckError) as caught:
            afc.import_model_bytes(b"\x00\xffnot a model at all", path="junk.onnx", name="junk")
        assert codes(caught.value) == ["AF6051"]


@pytest.mark.parametrize("backend", BACKENDS)
class TestFromSklearn:
    def test_classifier_with_scaler(self, data, backend, tmp_path):
        x, y = data
        scaler = StandardScaler().fit(x)
        clf = fitted(MLPClassifier((9,), activation="relu", max_iter=300, random_state=0), scaler.transform(x), y)
        agent = af.from_sklearn(clf, scaler, name="digits-ish", output=tmp_path / "mlp.af")
        assert af.validate(tmp_path / "mlp.af") == []
        out = run_agent((tmp_path / "mlp.af").read_bytes(), x, backend, tmp_path)
        np.testing.assert_allclose(out, clf.predict_proba(scaler.transform(x)), atol=1e-5)
        assert agent.header["name"] == "digits-ish"

    def test_pipeline_regressor(self, data, backend, tmp_path):
        x, _ = data
        pipe = fitted(make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(5,), activation="tanh", max_iter=200,
                                                                   random_state=0)), x, x[:, 0] - x[:, 3])
        agent = af.from_sklearn(pipe)
        out = run_agent(render_agent_file(agent), x, backend, tmp_path)
        np.testing.assert_allclose(out[:, 0], pipe.predict(x), atol=1e-5)


class TestFromSklearnRefusals:
    def test_an_unfitted_or_other_estimator(self):
        with pytest.raises(UsageError) as caught:
            af.from_sklearn(MLPClassifier())
        assert caught.value.code == "AF6070"
        with pytest.raises(UsageError) as caught:
            af.from_sklearn(StandardScaler().fit([[0.0], [1.0]]))
        assert caught.value.code == "AF6070"

    def test_an_output_that_cannot_be_written(self, data, tmp_path):
        x, y = data
        clf = fitted(MLPClassifier((3,), max_iter=20), x, y)
        with pytest.raises(UsageError) as caught:
            af.from_sklearn(clf, output=tmp_path / "no" / "such" / "dir" / "m.af")
        assert caught.value.code == "AF6071"

    def test_another_scaler(self, data):
        from sklearn.preprocessing import MinMaxScaler

        x, y = data
        clf = fitted(MLPClassifier((3,), max_iter=20), x, y)
        with pytest.raises(UsageError) as caught:
            af.from_sklearn(clf, MinMaxScaler().fit(x))
        assert caught.value.code == "AF6070"


class TestDamagedFiles:
    def test_a_damaged_model_is_a_diagnostic_never_a_traceback(self, make_network):
        """Seeded byte mutations of ONNX and FANN files: every outcome is an af error or an import."""
        import random

        from afc.fann import write_fann
        from afcore.errors import AfError

        rng = random.Random(0)
        seeds = [handmade_mlp().SerializeToString(), torch_style_mlp().SerializeToString(),
                 write_fann(make_network([3, 4, 2], "tanh", "sigmoid")).encode()]
        for _ in range(600):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                k = rng.randrange(len(data))
                if rng.random() < 0.5:
                    data[k] = rng.randrange(256)
                else:
                    del data[k:k + rng.randint(1, 20)]
            try:
                with np.errstate(all="ignore"):
                    afc.import_model_bytes(bytes(data), path="damaged", name="damaged")
            except AfError:
                pass
