"""afrt._onnxproto: the runtime's one ONNX protobuf loader and its sandbox check, on models built here."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
from afrt_testkit import onnx_model, random_weights
from onnx import helper

from afcore.errors import BundleError, SandboxViolation
from afrt import inference
from afrt._onnxproto import ensure_safe_onnx

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
            "import sys; from afrt._onnxproto import ensure_safe_onnx, parse_model\n"
            f"data = open({str(path)!r}, 'rb').read(); ensure_safe_onnx(data)\n"
            "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
            "import onnx; assert type(parse_model(data)) is onnx.ModelProto\n"
            "assert onnx.load_model_from_string(data) == parse_model(data)\n"
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


class TestOneLoader:
    def test_the_runtime_uses_this_module(self):
        assert inference.ensure_safe_onnx is ensure_safe_onnx


class TestStripInitializerData:
    """The check parses the model without its big raw_data fields, found by walking the wire format."""

    @staticmethod
    def _cleared(data: bytes, min_bytes: int) -> onnx.ModelProto:
        # the reference: protobuf's own parse, with every big raw_data of the graph's initializers cleared
        m = onnx.load_model_from_string(data)
        for tensor in m.graph.initializer:
            if len(tensor.raw_data) >= min_bytes:
                tensor.ClearField("raw_data")
        return m

    @pytest.mark.parametrize("min_bytes", [1, 64, 200, 1 << 30])
    def test_leaves_out_exactly_the_big_raw_data(self, min_bytes):
        from afrt._onnxproto import strip_initializer_data

        data = model().SerializeToString()
        stripped = strip_initializer_data(data, min_bytes=min_bytes)
        assert onnx.load_model_from_string(stripped) == self._cleared(data, min_bytes)
        assert (len(stripped) < len(data)) == (min_bytes <= 8 * 6 * 4)

    def test_a_big_external_initializer_is_still_refused(self):
        from afrt._onnxproto import strip_initializer_data

        m = model()
        tensor = m.graph.initializer[0]
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value="/etc/passwd")
        assert len(tensor.raw_data) >= 64  # raw_data too: the walk drops it, the check still sees the rest
        with pytest.raises(SandboxViolation) as info:
            ensure_safe_onnx(strip_initializer_data(m.SerializeToString(), min_bytes=64))
        assert info.value.code == "AF5021"

    @pytest.mark.parametrize("cut", [1, 7, 50, -3])
    def test_bytes_that_are_not_well_framed_are_left_to_the_parser(self, cut):
        from afrt._onnxproto import strip_initializer_data

        data = model().SerializeToString()
        broken = data[:cut]
        assert strip_initializer_data(broken, min_bytes=1) == broken
        with pytest.raises(BundleError) as info:
            ensure_safe_onnx(broken)
        assert info.value.code == "AF5043"

    def test_a_file_is_checked_through_a_memory_map(self, tmp_path):
        from afrt._onnxproto import ensure_safe_onnx_file

        good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
        good.write_bytes(model().SerializeToString())
        ensure_safe_onnx_file(str(good))
        m = model()
        m.graph.node.append(helper.make_node("Evil", ["output"], ["x"], domain="com.evil"))
        bad.write_bytes(m.SerializeToString())
        with pytest.raises(SandboxViolation):
            ensure_safe_onnx_file(str(bad))
