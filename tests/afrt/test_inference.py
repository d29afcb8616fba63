"""The ONNX backend: what the model check refuses, and the session against independent oracles."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from afrt_testkit import make_bundle, onnx_model, random_weights, reference_forward
from google.protobuf.internal import encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import afrt
from afcore.errors import BundleError, SandboxViolation
from afrt import inference
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

    def test_checks_without_importing_onnx_or_protobuf(self, tmp_path):
        # The check reads the wire format itself (start-up time of `af run`). For a malformed model
        # it parses with onnx's generated classes only, which a later `import onnx` shares.
        path = tmp_path / "m.onnx"
        path.write_bytes(model().SerializeToString())
        script = (
            "import sys; from afrt.inference import ensure_safe_onnx, _parse_model\n"
            f"data = open({str(path)!r}, 'rb').read(); ensure_safe_onnx(data)\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] == 'onnx' or m.startswith('google.protobuf')]\n"
            "assert not loaded, loaded\n"
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
        assert info.value.message.startswith("`model.onnx` is not an ONNX model: Error parsing message")


def _outcome(check, data: bytes) -> tuple:
    try:
        check(data)
    except (BundleError, SandboxViolation) as exc:
        return type(exc).__name__, exc.code, exc.message
    return ("accepted",)


def _with_protobuf(data: bytes) -> None:
    """The check as it was: the whole model parsed by protobuf (onnx's classes), then the same rules."""

    def malformed(model_bytes):
        raise inference._Malformed

    original, inference._read_model = inference._read_model, malformed
    try:
        ensure_safe_onnx(data)
    finally:
        inference._read_model = original


def _external(tensor: onnx.TensorProto, how: int) -> onnx.TensorProto:
    # how: 0 inline, 1 data_location only, 2 external_data entry only, 3 both
    if how & 1:
        tensor.data_location = onnx.TensorProto.EXTERNAL
    if how & 2:
        tensor.external_data.add(key="location", value="/etc/passwd")
    return tensor


_NAMES = st.sampled_from(["", "a", "w0", "ünï", "x y"])
_DOMAINS = st.sampled_from(["", "", "", "ai.onnx", "com.evil", "ai.onnx.ml", "com.microsoft"])


@st.composite
def _tensors(draw) -> onnx.TensorProto:
    tensor = numpy_helper.from_array(np.zeros(draw(st.integers(0, 3)), np.float32), draw(_NAMES))
    return _external(tensor, draw(st.sampled_from([0, 0, 0, 1, 2, 3])))


@st.composite
def _graphs(draw, depth: int = 0) -> onnx.GraphProto:
    graph = onnx.GraphProto(name=draw(_NAMES))
    graph.initializer.extend(draw(st.lists(_tensors(), max_size=3)))
    for values in draw(st.lists(_tensors(), max_size=2)):
        sparse = graph.sparse_initializer.add()
        sparse.values.CopyFrom(values)
        sparse.indices.CopyFrom(numpy_helper.from_array(np.zeros(0, np.int64), "i"))
    for _ in range(draw(st.integers(0, 3))):
        node = graph.node.add(op_type=draw(st.sampled_from(["Relu", "Evil", "If", "Constant"])),
                              name=draw(_NAMES), domain=draw(_DOMAINS))
        for _ in range(draw(st.integers(0, 2))):
            attr = node.attribute.add(name=draw(_NAMES), type=onnx.AttributeProto.UNDEFINED)
            if draw(st.booleans()):
                attr.t.CopyFrom(draw(_tensors()))
            attr.tensors.extend(draw(st.lists(_tensors(), max_size=2)))
            if depth < 2 and draw(st.booleans()):
                attr.g.CopyFrom(draw(_graphs(depth + 1)))
            if depth < 2:
                attr.graphs.extend(draw(st.lists(_graphs(depth + 1), max_size=2)))
    return graph


@st.composite
def _models(draw) -> bytes:
    m = onnx.ModelProto(ir_version=9)
    if draw(st.integers(0, 4)):
        m.graph.CopyFrom(draw(_graphs()))
    for domain in draw(st.lists(_DOMAINS, max_size=3)):
        m.opset_import.add(domain=domain, version=17)
    if draw(st.integers(0, 5)) == 0:
        m.functions.add(name=draw(_NAMES), domain=draw(_DOMAINS))
    return m.SerializeToString()


def _field(number: int, wire: int, payload: bytes = b"") -> bytes:
    key = encoder._VarintBytes((number << 3) | wire)
    if wire == 2:
        return key + encoder._VarintBytes(len(payload)) + payload
    return key + payload


class TestReaderAgreesWithProtobuf:
    """The wire-format reader sees what protobuf parses: same verdict and message, as the check gave before."""

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_models())
    def test_random_models(self, data):
        assert _outcome(ensure_safe_onnx, data) == _outcome(_with_protobuf, data)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_models(), _models())
    def test_concatenated_models_merge(self, first, second):
        # protobuf reads two serialized messages back to back as one, merged: repeated fields are
        # appended, singular messages (the graph, attribute tensors) merged, the last string wins
        data = first + second
        assert _outcome(ensure_safe_onnx, data) == _outcome(_with_protobuf, data)

    @pytest.mark.parametrize("extra", [
        _field(1000, 0, b"\x05"),                                   # unknown varint
        _field(1000, 1, b"\0" * 8), _field(1000, 5, b"\0" * 4),       # unknown fixed-width fields
        _field(1000, 3) + _field(1, 0, b"\x01") + _field(1000, 4),   # an unknown group
        _field(7, 0, b"\x01"),                                      # the graph with the wrong wire type
        _field(8, 5, b"\0" * 4),                                     # an opset import as fixed32
        _field(7, 2, _field(5, 2, _field(14, 0, b"\x81\x80\x80\x80\x10"))),  # data_location 2**32+1
        _field(7, 2, _field(5, 2, _field(14, 0, b"\x01") + _field(14, 0, b"\x07"))),  # 1 then unknown 7
        _field(7, 2, _field(5, 2, _field(14, 0, b"\x01") + _field(14, 0, b"\x00"))),  # 1 then 0
        _field(7, 2, _field(5, 2, _field(14, 2, b"\x01"))),           # data_location as bytes
        _field(7, 2, _field(1, 2, _field(7, 2, b"com.evil") + _field(7, 2, b""))),  # the last domain wins
        _field(7, 2, _field(1, 2, _field(7, 2, b"\xff\xfe"))),        # a domain that is not UTF-8
        _field(7, 0, b"\xff" * 11),                                  # a varint past 10 bytes
        _field(1000, 4),                                             # an end-group without start
        _field(1000, 3) + _field(1, 0, b"\x01") + _field(999, 4),    # a group closed by another number
        b"\x00\x01",                                                 # field number 0
        _field(1000, 6), _field(1000, 7),                            # wire types 6 and 7
        _field(7, 2, b"\x0a\x05ab"),                                 # a node longer than its graph
    ])
    def test_wire_corner_cases(self, extra):
        data = model().SerializeToString() + extra
        assert _outcome(ensure_safe_onnx, data) == _outcome(_with_protobuf, data)

    @pytest.mark.parametrize("depth", [30, 99, 100, 101, 400])
    def test_deeply_nested_subgraphs(self, depth):
        graph = _field(5, 2, _field(14, 0, b"\x01"))  # innermost: an external initializer
        for _ in range(depth):
            attribute = _field(1, 2, b"then_branch") + _field(6, 2, graph)
            graph = _field(1, 2, _field(4, 2, b"If") + _field(5, 2, attribute))
        data = model().SerializeToString() + _field(7, 2, graph)
        assert _outcome(ensure_safe_onnx, data) == _outcome(_with_protobuf, data)

    @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_damaged_models(self, data):
        # Bytes damaged anywhere: when protobuf reads them, the verdict is the same; when only the
        # reader does (the damage is at a level it skips), the model reaches onnxruntime, which
        # refuses it with the message the check gave before.
        base = bytearray(data.draw(st.sampled_from(_DAMAGE_BASES)))
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(base) - 1))
            action = data.draw(st.sampled_from(["flip", "cut", "drop", "insert"]))
            if action == "flip":
                base[at] ^= 1 << data.draw(st.integers(0, 7))
            elif action == "cut":
                del base[at:]
                if not base:
                    base += b"\x08"
            elif action == "drop":
                del base[at]
                if not base:
                    base += b"\x08"
            else:
                base.insert(at, data.draw(st.integers(0, 255)))
        damaged = bytes(base)
        new, old = _outcome(ensure_safe_onnx, damaged), _outcome(_with_protobuf, damaged)
        if new == old:
            return
        assert old[1] == "AF5043" and new == ("accepted",), (new, old)
        with pytest.raises(BundleError) as info:
            OnnxModel(damaged, agent="a", input_name="input", output_name="output", threads=1)
        assert (info.value.code, info.value.message) == old[1:]


def _constant_model() -> bytes:
    m = model()
    m.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(2, np.float32))))
    return m.SerializeToString()


#: small models whose bytes `test_damaged_models` damages (the MLP's weights make it ~400 bytes)
_DAMAGE_BASES = [onnx_model(random_weights((2, 2), seed=1)).SerializeToString(), _constant_model()]


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
