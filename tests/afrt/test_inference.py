"""The ONNX backend: what the model check refuses, and the session against independent oracles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from afrt_testkit import make_bundle, onnx_model, random_weights, reference_forward
from onnx import helper
from onnx.reference import ReferenceEvaluator

import afrt
from afcore.errors import BundleError, SandboxViolation
from afrt.inference import OnnxModel, ensure_safe_onnx, session_threads

WEIGHTS = random_weights((8, 6, 4), seed=11)


def model() -> onnx.ModelProto:
    return onnx_model(WEIGHTS)


class TestEnsureSafeOnnx:
    def test_accepts_a_plain_model(self):
        ensure_safe_onnx(model().SerializeToString())

    def test_refuses_external_data(self):
        m = model()
        tensor = m.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="/etc/passwd")
        with pytest.raises(SandboxViolation) as info:
            ensure_safe_onnx(m.SerializeToString())
        assert info.value.code == "AF5021" and "`w0`" in info.value.message

    def test_refuses_external_data_in_a_constant_node(self):
        m = model()
        value = onnx.TensorProto(name="c", data_type=onnx.TensorProto.FLOAT, dims=[1])
        value.data_location = onnx.TensorProto.EXTERNAL
        value.external_data.add(key="location", value="weights.bin")
        m.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value=value))
        with pytest.raises(SandboxViolation) as info:
            ensure_safe_onnx(m.SerializeToString())
        assert info.value.code == "AF5021"

    @staticmethod
    def _external(name: str, data_type=onnx.TensorProto.FLOAT) -> onnx.TensorProto:
        tensor = onnx.TensorProto(name=name, data_type=data_type, dims=[1])
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="/etc/passwd")
        return tensor

    @pytest.mark.parametrize("part", ["values", "indices"])
    def test_refuses_external_data_in_sparse_tensors(self, part):
        # In a sparse initializer and in a Constant node's sparse_value, values and indices alike.
        inline = {"values": onnx.TensorProto(name="v", data_type=onnx.TensorProto.FLOAT, dims=[1], float_data=[1.0]),
                  "indices": onnx.TensorProto(name="i", data_type=onnx.TensorProto.INT64, dims=[1], int64_data=[0])}
        inline[part] = self._external(part, inline[part].data_type)
        sparse = onnx.SparseTensorProto(values=inline["values"], indices=inline["indices"], dims=[4])
        for where in ("initializer", "attribute"):
            m = model()
            if where == "initializer":
                m.graph.sparse_initializer.append(sparse)
            else:
                m.graph.node.insert(0, helper.make_node("Constant", [], ["s"], sparse_value=sparse))
            with pytest.raises(SandboxViolation) as info:
                ensure_safe_onnx(m.SerializeToString())
            assert info.value.code == "AF5021", where

    def test_refuses_a_custom_domain_operator(self):
        m = model()
        m.graph.node.append(helper.make_node("Evil", ["output"], ["x"], domain="com.evil"))
        m.opset_import.append(helper.make_opsetid("com.evil", 1))
        with pytest.raises(SandboxViolation) as info:
            ensure_safe_onnx(m.SerializeToString())
        assert info.value.code == "AF5022" and "com.evil" in info.value.message

    def test_refuses_a_custom_domain_inside_a_subgraph(self):
        m = model()
        inner = helper.make_graph(
            [helper.make_node("Evil", [], ["y"], domain="com.evil")], "inner", [],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        cond = helper.make_node("If", ["c"], ["z"], then_branch=inner, else_branch=inner)
        m.graph.node.append(cond)
        with pytest.raises(SandboxViolation, match="operator `Evil`"):
            ensure_safe_onnx(m.SerializeToString())

    def test_refuses_local_functions(self):
        m = model()
        m.functions.append(helper.make_function("", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                                [helper.make_opsetid("", 17)]))
        with pytest.raises(SandboxViolation, match="local function `Twice`"):
            ensure_safe_onnx(m.SerializeToString())

    def test_checks_without_importing_onnx(self, tmp_path):
        # The check reads the model with onnx's generated classes only (start-up time of `af run`);
        # a later `import onnx` in the same process shares those classes.
        path = tmp_path / "m.onnx"
        path.write_bytes(model().SerializeToString())
        script = (
            "import sys; from afrt.inference import ensure_safe_onnx, _parse_model\n"
            f"data = open({str(path)!r}, 'rb').read(); ensure_safe_onnx(data)\n"
            "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
            "import onnx; assert type(_parse_model(data)) is onnx.ModelProto\n"
            "assert onnx.load_model_from_string(data) == _parse_model(data)\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)

    def test_trailing_bytes_are_a_bundle_error(self):
        # onnx.load_model_from_string refuses bytes left after the message; so does the check.
        data = model().SerializeToString()
        with pytest.raises(BundleError) as info:
            ensure_safe_onnx(data + b"\x80")
        assert info.value.code == "AF5043"

    def test_garbage_is_a_bundle_error(self):
        with pytest.raises(BundleError) as info:
            ensure_safe_onnx(b"\xff\xff\xff not protobuf")
        assert info.value.code == "AF5043"


class TestOnnxModel:
    def session(self, **kw) -> OnnxModel:
        return OnnxModel(model().SerializeToString(), agent="a", input_name="input", output_name="output", threads=1,
                         **kw)

    def test_agrees_with_reference_evaluator_and_numpy(self):
        x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
        out = self.session().run(x)
        (oracle,) = ReferenceEvaluator(model()).run(None, {"input": x})
        np.testing.assert_allclose(out, oracle, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out, reference_forward(WEIGHTS, x), rtol=1e-5, atol=1e-5)

    def test_session_options(self):
        options = self.session().session.get_session_options()
        assert options.inter_op_num_threads == 1 and options.intra_op_num_threads == 1
        assert options.log_severity_level == 3

    def test_signature_must_match_the_manifest(self):
        s = self.session()
        s.ensure_signature(8, 4)
        with pytest.raises(BundleError) as info:
            s.ensure_signature(8, 5)
        assert info.value.code == "AF5046"

    def test_onnxruntime_refusal_is_a_bundle_error(self):
        with pytest.raises(BundleError) as info:
            OnnxModel(b"", agent="a", input_name="input", output_name="output", threads=1)
        assert info.value.code == "AF5043"

    def test_bundle_with_mismatched_model_is_refused_at_load(self):
        other = onnx_model(random_weights((8, 6, 5))).SerializeToString()
        data, _ = make_bundle((8, 6, 4), onnx_bytes=other)
        with pytest.raises(BundleError) as info:
            afrt.load(data, backend="onnx")
        assert info.value.code == "AF5046"

    def test_unsafe_model_is_refused_at_load(self):
        m = model()
        m.graph.node.append(helper.make_node("Evil", ["output"], ["x"], domain="com.evil"))
        data, _ = make_bundle((8, 6, 4), onnx_bytes=m.SerializeToString())
        with pytest.raises(SandboxViolation):
            afrt.load(data, backend="onnx")


class TestSessionThreads:
    @pytest.mark.parametrize("cores, threads, expected", [(1.0, None, 1), (0.5, None, 1), (2.1, None, 3),
                                                           (None, None, 1), (4, 2, 2)])
    def test_ceil_of_cpu_cores_at_least_one(self, cores, threads, expected):
        assert session_threads(cores, threads) == expected


class TestQuiet:
    def test_loading_and_running_print_nothing(self, capfd):
        data, _ = make_bundle((8, 6, 4))
        agent = afrt.load(data, backend="onnx")
        agent.infer(np.zeros((3, 8), np.float32))
        captured = capfd.readouterr()
        assert captured.err == "" and captured.out == ""
