"""The ONNX backend: what the model check refuses, and the session against independent oracles."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from afrt_testkit import make_bundle, onnx_model, random_weights, reference_forward
from onnx import helper
from onnx.reference import ReferenceEvaluator

import afrt
from afcore.errors import BundleError, SandboxViolation
from afrt import inference
from afrt.inference import OnnxModel, session_threads

WEIGHTS = random_weights((8, 6, 4), seed=11)


def model() -> onnx.ModelProto:
    return onnx_model(WEIGHTS)


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
    def test_ceil_of_cpu_cores_at_least_one(self, cores, threads, expected, monkeypatch):
        monkeypatch.setattr(inference, "available_cores", lambda: 8)
        assert session_threads(cores, threads) == expected

    @pytest.mark.parametrize("cores, threads", [(5000, None), (2.0**31, None), (float("inf"), None), (None, 64)])
    def test_capped_at_the_machine_with_a_notice(self, cores, threads, monkeypatch):
        monkeypatch.setattr(inference, "available_cores", lambda: 2)
        assert session_threads(cores, threads) == 2
        assert "this machine has 2 CPU(s)" in inference.threads_notice(cores, threads)
        assert inference.threads_notice(2, None) is None

    def test_available_cores_follows_the_affinity_mask(self):
        import os

        expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert inference.available_cores() == expected

    def test_a_huge_cpu_cores_loads_quickly_and_says_so(self):
        import time

        data, _ = make_bundle((8, 6, 4), cpu_cores=5000)
        started = time.perf_counter()
        agent = afrt.load(data, backend="onnx")
        assert time.perf_counter() - started < 10  # over a minute when 5000 threads were created
        assert agent._engine.threads == inference.available_cores()
        assert any("5,000 inference threads" in n for n in agent.notices)


class TestQuiet:
    def test_loading_and_running_print_nothing(self, capfd):
        data, _ = make_bundle((8, 6, 4))
        agent = afrt.load(data, backend="onnx")
        agent.infer(np.zeros((3, 8), np.float32))
        captured = capfd.readouterr()
        assert captured.err == "" and captured.out == ""
