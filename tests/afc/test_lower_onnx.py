"""The ONNX backend against independent references: numpy float64 and onnx's ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from afc.lower_onnx import IR_VERSION, OPSET, check_model_bytes, lower_network, model_bytes, network_model_bytes
from afc.spec import HIDDEN_ACTIVATIONS, OUTPUT_ACTIVATIONS, LayerSpec, NetworkSpec
from afcore.errors import BundleError, LoweringError
from float64_reference import forward64, softmax

def run_ort(data: bytes, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 2  # warnings and worse
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


def inputs(n: int, width: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * 2.0).astype(np.float32)


class TestModelShape:
    def test_signature_opset_and_ir_version(self, make_network):
        model = lower_network(make_network([6, 5, 4, 3], "relu", "softmax"), graph_name="demo")
        assert model.ir_version == IR_VERSION == 10
        assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
        (inp,), (out,) = model.graph.input, model.graph.output
        assert inp.name == "input" and out.name == "output"
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 6]
        assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 3]

    def test_weights_are_initializers_named_as_in_the_af(self, make_network):
        network = make_network([4, 3, 2])
        model = lower_network(network)
        tensors = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        assert sorted(tensors) == ["layers.0.bias", "layers.0.weight", "layers.1.bias", "layers.1.weight"]
        np.testing.assert_array_equal(tensors["layers.1.weight"], network.layers[1].weight)

    def test_node_names_point_at_layers(self, make_network):
        model = lower_network(make_network([4, 3, 2], "gelu", "softmax"))
        names = [n.name for n in model.graph.node]
        assert names == ["layers.0.gemm", "layers.0.gelu", "layers.1.gemm", "layers.1.softmax"]

    def test_linear_output_adds_no_node(self, make_network):
        model = lower_network(make_network([4, 3, 2], "linear", "linear"))
        assert [n.op_type for n in model.graph.node] == ["Gemm", "Gemm"]

    def test_full_check_passes(self, make_network):
        data = model_bytes(lower_network(make_network([8, 6, 4], "elu", "sigmoid")))
        onnx.checker.check_model(data, full_check=True)


class TestNetworkModelBytes:
    """`network_model_bytes` splices the weights into the serialized skeleton: protobuf's own serializer is the reference."""

    @pytest.mark.parametrize("sizes", [[3, 2], [5, 4, 3], [784, 128, 64, 32, 10], [1, 1], [200, 1]])
    def test_same_bytes_as_protobuf(self, make_network, sizes):
        network = make_network(sizes, "tanh", "softmax")
        reference = lower_network(network, graph_name="agent-x").SerializeToString()
        assert network_model_bytes(network, graph_name="agent-x") == reference

    def test_non_contiguous_and_float64_weights(self, make_network):
        network = make_network([6, 5, 3])
        layers = (LayerSpec(0, np.asfortranarray(network.layers[0].weight), network.layers[0].bias, "relu"),
                  LayerSpec(1, network.layers[1].weight.astype(np.float64), network.layers[1].bias, "relu"))
        odd = NetworkSpec(6, 3, layers, hidden_activation="relu", output_activation="linear")
        assert network_model_bytes(odd) == network_model_bytes(network)

    def test_parses_and_runs_like_the_float64_reference(self, make_network):
        network = make_network([7, 6, 4], "relu", "softmax")
        x = inputs(9, 7)
        np.testing.assert_allclose(run_ort(network_model_bytes(network), x), forward64(network, x), rtol=1e-5,
                                   atol=1e-5)

    def test_checker_errors_still_surface(self, make_network, monkeypatch):
        def refuse(*args, **kwargs):
            raise onnx.checker.ValidationError("refused")

        monkeypatch.setattr(onnx.checker, "check_model", refuse)
        with pytest.raises(LoweringError) as info:
            network_model_bytes(make_network([3, 2]))
        assert info.value.code == "AF3003"


class TestSkeletonShapeCheck:
    """`network_model_bytes` runs shape inference on the weightless skeleton: it must decide as
    ``check_model(full_check=True)`` on the whole model does (onnx's own checker is the reference)."""

    @staticmethod
    def _broken(network: NetworkSpec) -> tuple[bytes, onnx.ModelProto]:
        # layer 1 declares 5 inputs where layer 0 gives 4: only shape inference can see it
        model, skeleton = lower_network(network), lower_network(network, with_data=False)
        for proto in (model, skeleton):
            tensor = proto.graph.initializer[2]
            tensor.dims[:] = [3, 5]
        model.graph.initializer[2].raw_data = np.zeros(15, np.float32).tobytes()
        return model.SerializeToString(), skeleton

    def test_shape_error_refused_like_full_check(self, make_network):
        from afc.lower_onnx import _check_bytes

        data, skeleton = self._broken(make_network([6, 4, 3]))
        onnx.checker.check_model(data)  # the structural checker alone lets it through
        with pytest.raises(onnx.shape_inference.InferenceError):
            onnx.checker.check_model(data, full_check=True)
        with pytest.raises(LoweringError) as info:
            _check_bytes(data, skeleton=skeleton)
        assert info.value.code == "AF3003"

    @pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
    def test_valid_models_pass_both(self, make_network, hidden):
        data = network_model_bytes(make_network([5, 4, 3], hidden, "softmax"))
        onnx.checker.check_model(data, full_check=True)


class TestLeanCheck:
    """Above LEAN_CHECK_BYTES the checker reads the skeleton's structure, never the bytes of the weights
    (a parse of them was a third copy of every weight in `af run big.af`), and still refuses what the
    full check refuses."""

    @pytest.fixture
    def lean(self, monkeypatch):
        import afc.lower_onnx as lower_onnx

        monkeypatch.setattr(lower_onnx, "LEAN_CHECK_BYTES", 0)
        seen: list[type] = []
        real = onnx.checker.check_model
        monkeypatch.setattr(onnx.checker, "check_model", lambda model, *a, **k: (seen.append(type(model)), real(model, *a, **k)))
        return seen

    def test_weights_are_never_parsed_again(self, lean, make_network):
        network = make_network([6, 4, 3])
        data = network_model_bytes(network)
        assert lean == [onnx.ModelProto]
        assert data == model_bytes(lower_network(network))

    def test_a_bad_node_is_still_refused(self, lean, make_network):
        from afc.lower_onnx import _check_bytes

        network = make_network([6, 4, 3])
        model, skeleton = lower_network(network), lower_network(network, with_data=False)
        for proto in (model, skeleton):
            proto.graph.node[0].op_type = "NoSuchOp"
        with pytest.raises(LoweringError) as info:
            _check_bytes(model.SerializeToString(), skeleton=skeleton)
        assert info.value.code == "AF3003"

    def test_a_shape_error_is_still_refused(self, lean, make_network):
        from afc.lower_onnx import _check_bytes

        data, skeleton = TestSkeletonShapeCheck._broken(make_network([6, 4, 3]))
        with pytest.raises(LoweringError) as info:
            _check_bytes(data, skeleton=skeleton)
        assert info.value.code == "AF3003"


class TestActivations:
    @pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
    @pytest.mark.parametrize("output", OUTPUT_ACTIVATIONS)
    def test_onnxruntime_matches_float64_numpy(self, make_network, hidden, output):
        network = make_network([7, 9, 5, 4], hidden, output, seed=len(hidden) * 7 + len(output))
        x = inputs(16, 7)
        got = run_ort(model_bytes(lower_network(network)), x)
        np.testing.assert_allclose(got, forward64(network, x), rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
    def test_reference_evaluator_agrees(self, make_network, hidden):
        network = make_network([5, 6, 3], hidden, "softmax", seed=3)
        model = lower_network(network)
        x = inputs(8, 5, seed=2)
        reference = ReferenceEvaluator(model).run(None, {"input": x})[0]
        got = run_ort(model_bytes(model), x)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(reference, forward64(network, x), rtol=1e-5, atol=1e-5)

    def test_activation_edge_values(self):
        # identity weights, so the activation sees these values exactly; the absolute tolerance admits
        # onnxruntime's saturated sigmoid (0 instead of 9e-14 at -30)
        x = np.array([[0.0, 1e-40, -1e-40, 88.7, -88.7, 30.0, -30.0, 3.0]], dtype=np.float32)
        for hidden in HIDDEN_ACTIVATIONS:
            eye = LayerSpec(0, np.eye(8, dtype=np.float32), np.zeros(8, np.float32), hidden)
            out = LayerSpec(1, np.eye(8, dtype=np.float32), np.zeros(8, np.float32), hidden)
            network = NetworkSpec(8, 8, (eye, out), hidden, "linear")
            got = run_ort(model_bytes(lower_network(network)), x)
            np.testing.assert_allclose(got, forward64(network, x), rtol=1e-5, atol=1e-7, err_msg=hidden)

    def test_softmax_of_large_logits_does_not_overflow(self):
        layer = LayerSpec(0, np.eye(3, dtype=np.float32), np.zeros(3, np.float32), "linear")
        network = NetworkSpec(3, 3, (layer,), "relu", "softmax")
        got = run_ort(model_bytes(lower_network(network)), np.array([[1000.0, 999.0, -1000.0]], np.float32))
        np.testing.assert_allclose(got, softmax(np.array([[1000.0, 999.0, -1000.0]])), rtol=1e-6)


class TestOnnxruntime:
    def test_loads_without_warnings(self, make_network, capfd):
        capfd.readouterr()
        for hidden in HIDDEN_ACTIVATIONS:
            run_ort(model_bytes(lower_network(make_network([4, 3, 2], hidden, "softmax"))), inputs(1, 4))
        assert capfd.readouterr().err == ""

    def test_dynamic_batch(self, make_network):
        data = model_bytes(lower_network(make_network([4, 3, 2])))
        for batch in (1, 3, 64):
            assert run_ort(data, inputs(batch, 4)).shape == (batch, 2)


class TestErrors:
    def test_inconsistent_shapes_are_a_lowering_error(self, make_network):
        network = make_network([4, 3, 2])
        broken = NetworkSpec(5, 2, network.layers, "relu")
        with pytest.raises(LoweringError) as info:
            lower_network(broken)
        assert info.value.code == "AF3002"

    def test_model_over_the_protobuf_limit(self, make_network, monkeypatch):
        import afc.lower_onnx

        monkeypatch.setattr(afc.lower_onnx, "MAX_MODEL_BYTES", 100_000)
        model = lower_network(make_network([200, 150, 10]))  # about 120 kB of weights
        with pytest.raises(LoweringError) as info:
            model_bytes(model)
        assert info.value.code == "AF3007"

    def test_unknown_activation(self, make_network):
        network = make_network([4, 3, 2], "swish")
        with pytest.raises(LoweringError) as info:
            lower_network(network)
        assert info.value.code == "AF3001"


class TestCheckModelBytes:
    def test_accepts_our_models(self, make_network):
        data = model_bytes(lower_network(make_network([4, 3, 2])))
        assert check_model_bytes(data).graph.node[0].name == "layers.0.gemm"

    def test_refuses_garbage(self):
        with pytest.raises(BundleError) as info:
            check_model_bytes(b"\xff\xff not protobuf")
        assert info.value.code == "AF4020"

    def test_refuses_external_data(self, make_network):
        model = lower_network(make_network([4, 3, 2]))
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="/etc/passwd")
        with pytest.raises(BundleError) as info:
            check_model_bytes(model.SerializeToString())
        assert info.value.code == "AF4021"

    def test_refuses_custom_domains_in_subgraphs(self, make_network):
        model = lower_network(make_network([4, 3, 2]))
        evil = onnx.helper.make_node("Evil", ["input"], ["y"], domain="com.evil")
        body = onnx.helper.make_graph([evil], "body", [], [onnx.helper.make_tensor_value_info("y", 1, None)])
        cond = onnx.helper.make_node("If", ["c"], ["z"], then_branch=body, else_branch=body)
        model.graph.node.append(cond)
        with pytest.raises(BundleError) as info:
            check_model_bytes(model.SerializeToString())
        assert info.value.code == "AF4022"

    def test_refuses_custom_domains(self, make_network):
        model = lower_network(make_network([4, 3, 2]))
        model.opset_import.append(onnx.helper.make_opsetid("com.evil", 1))
        model.graph.node[0].domain = "com.evil"
        with pytest.raises(BundleError) as info:
            check_model_bytes(model.SerializeToString())
        assert info.value.code == "AF4022"


class TestWeightsAsInputs:
    """The model of an agent that learns lists its layer weights as graph inputs too, initializers as
    defaults: the runtime feeds new weights instead of making a new session after every step."""

    def test_only_a_learning_agents_model_takes_its_weights(self, make_network):
        network = make_network([5, 4, 3], "tanh", "softmax")
        learning = onnx.load_model_from_string(network_model_bytes(network, weights_as_inputs=True))
        plain = onnx.load_model_from_string(network_model_bytes(network))
        names = ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
        assert [i.name for i in learning.graph.input] == ["input", *names]
        assert [i.name for i in plain.graph.input] == ["input"]
        assert [t.name for t in learning.graph.initializer] == names == [t.name for t in plain.graph.initializer]

    def test_defaults_and_fed_weights_compute_the_network(self, make_network):
        network, other = make_network([5, 4, 3], "tanh", "softmax"), make_network([5, 4, 3], "tanh", "softmax", seed=7)
        model = onnx.load_model_from_string(network_model_bytes(network, weights_as_inputs=True))
        x = np.random.default_rng(2).random((6, 5), dtype=np.float32)
        reference = ReferenceEvaluator(model)
        np.testing.assert_allclose(reference.run(None, {"input": x})[0], forward64(network, x), rtol=1e-5, atol=1e-6)
        fed = {f"layers.{layer.index}.{part}": getattr(layer, part) for layer in other.layers for part in ("weight", "bias")}
        np.testing.assert_allclose(reference.run(None, {"input": x, **fed})[0], forward64(other, x), rtol=1e-5, atol=1e-6)
