"""The bundle an agent compiles to: manifest (against its JSON schema), members, reproducibility, examples."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

import afc
import afc.compile
from afc.compile import compile_agent, compile_file, lower_agent, parse_targets, write_bundle_file
from afc.emit import safetensors_parts
from afcore.bundle import read_bundle
from afcore.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.af"))
SCHEMA = json.loads((ROOT / "schemas" / "afb-manifest-1.0.schema.json").read_text())
XOR = ROOT / "examples" / "xor.af"


@pytest.fixture(scope="module")
def xor_spec():
    return afc.load_agent_file(XOR).spec()


@pytest.fixture(scope="module")
def xor_bundle(xor_spec):
    return read_bundle(compile_agent(xor_spec))


def onnx_run(model: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": x})[0]


class TestManifest:
    def test_validates_against_the_schema(self, xor_bundle):
        jsonschema.Draft202012Validator(SCHEMA).validate(xor_bundle.manifest)

    def test_schema_itself_is_valid(self):
        jsonschema.Draft202012Validator.check_schema(SCHEMA)

    def test_agent_source_and_compiler(self, xor_bundle, xor_spec):
        manifest = xor_bundle.manifest
        assert manifest["agent"]["name"] == xor_spec.name == "xor-agent"
        assert manifest["source"]["file"] == "xor.af"
        assert manifest["source"]["sha256"] == xor_spec.source_sha256
        assert manifest["compiler"]["name"] == "af"
        assert manifest["targets"] == ["onnx", "wasm"]
        assert manifest["onnx"] == {"member": "model.onnx", "opset": 21, "ir_version": 10}
        assert manifest["wasm"]["abi"] == 2 and manifest["wasm"]["max_batch"] >= 1

    def test_network_signature_and_layers(self, xor_bundle, xor_spec):
        network = xor_bundle.manifest["network"]
        assert network["input"] == {"name": "input", "dtype": "float32", "shape": [None, 2]}
        assert network["output"] == {"name": "output", "dtype": "float32", "shape": [None, 1]}
        assert [(lay["in"], lay["out"], lay["activation"]) for lay in network["layers"]] == [
            (2, 4, "tanh"), (4, 1, "sigmoid")]
        assert network["parameters"] == xor_spec.network.parameters == 17

    def test_workflows_are_step_trees_with_basename_spans(self, xor_bundle, xor_spec):
        workflows = xor_bundle.manifest["workflows"]
        assert set(workflows) == {"initialization", "execution", "shutdown"}
        for name, steps in workflows.items():
            assert [s["name"] for s in steps] == [s.name for s in xor_spec.workflows[name].steps]
            for step in steps:
                assert step["span"]["path"] == "xor.af"

    def test_resources(self, xor_bundle, xor_spec):
        assert xor_bundle.manifest["resources"]["limits"] == dict(xor_spec.resources.limits)


class TestMembers:
    def test_weights_round_trip(self, xor_bundle, xor_spec):
        tensors = load_safetensors(xor_bundle.members["weights.safetensors"])
        for layer in xor_spec.network.layers:
            np.testing.assert_array_equal(tensors[f"layers.{layer.index}.weight"], layer.weight)
            np.testing.assert_array_equal(tensors[f"layers.{layer.index}.bias"], layer.bias)

    def test_training_data_and_header(self, xor_bundle, xor_spec):
        data = load_safetensors(xor_bundle.members["training_data.safetensors"])
        np.testing.assert_array_equal(data["inputs"], xor_spec.training_data[0])
        assert xor_bundle.members["agent.yaml"].decode() == xor_spec.header_text

    def test_onnx_only_target(self, xor_spec):
        bundle = read_bundle(compile_agent(xor_spec, targets=("onnx",)))
        assert "model.wasm" not in bundle.members and "wasm" not in bundle.manifest
        assert bundle.manifest["targets"] == ["onnx"]
        jsonschema.Draft202012Validator(SCHEMA).validate(bundle.manifest)

    def test_extra_sections_pass_through(self, xor_spec):
        spec = dataclasses.replace(xor_spec, extra_sections={"notes": b"opaque \x00 bytes"})
        bundle = read_bundle(compile_agent(spec, targets=("onnx",)))
        assert bundle.members["sections/notes"] == b"opaque \x00 bytes"

    def test_xor_solves_xor_in_both_backends(self, xor_bundle, wasm_runner):
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
        expected = np.array([[0], [1], [1], [0]])
        assert np.array_equal(onnx_run(xor_bundle.members["model.onnx"], x) > 0.5, expected == 1)
        assert np.array_equal(wasm_runner(xor_bundle.members["model.wasm"], x, 1) > 0.5, expected == 1)


class TestReproducible:
    def test_same_file_same_bytes(self, tmp_path):
        first = compile_file(XOR, output=tmp_path / "a.afb").read_bytes()
        second = compile_file(XOR, output=tmp_path / "b.afb").read_bytes()
        assert first == second

    def test_independent_of_the_source_directory(self, tmp_path):
        copy = tmp_path / "elsewhere" / "xor.af"
        copy.parent.mkdir()
        shutil.copy(XOR, copy)
        assert compile_file(copy).read_bytes() == compile_file(XOR, output=tmp_path / "x.afb").read_bytes()

    def test_default_output_is_beside_the_source(self, tmp_path):
        copy = tmp_path / "xor.af"
        shutil.copy(XOR, copy)
        assert compile_file(copy) == tmp_path / "xor.afb"
        assert (tmp_path / "xor.afb").is_file()


class TestSafetensorsParts:
    """The weights member is written as header + array views; the safetensors library is the reference."""

    @staticmethod
    def joined(tensors) -> bytes:
        return b"".join(bytes(part) for part in safetensors_parts(tensors))

    @pytest.mark.parametrize("tensors", [
        {},
        {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(1, np.float32)},
        {f"layers.{i}.weight": np.full((i + 1, 3), i, np.float32) for i in range(12)},  # "10" sorts before "2"
        {"scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 4), np.float32), "ünï": np.ones(3, np.float32)},
    ])
    def test_same_bytes_as_the_library(self, tensors):
        assert self.joined(tensors) == save_safetensors(dict(sorted(tensors.items())))

    def test_views_not_copies_and_odd_layouts(self):
        weight = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
        parts = safetensors_parts({"w": weight})
        assert self.joined({"w": weight}) == save_safetensors({"w": np.ascontiguousarray(weight)})
        contiguous = np.arange(8, dtype=np.float32)
        assert np.shares_memory(np.frombuffer(safetensors_parts({"c": contiguous})[1], np.float32), contiguous)
        assert len(parts) == 2

    def test_other_dtypes_use_the_library(self):
        tensors = {"x": np.arange(4, dtype=np.float64)}
        assert self.joined(tensors) == save_safetensors(tensors)


class TestThreadedLowering:
    """Big networks are lowered and hashed in threads: the bundle must not change by a byte."""

    def test_same_bundle_as_serial_lowering(self, xor_spec, monkeypatch):
        serial = compile_agent(xor_spec)
        assert lower_agent(xor_spec).digests == {}
        monkeypatch.setattr(afc.compile, "THREADED_LOWERING_BYTES", 0)
        lowered = lower_agent(xor_spec)
        assert set(lowered.digests) == {"model.onnx", "model.wasm", "weights.safetensors"}
        assert compile_agent(xor_spec) == serial
        assert read_bundle(serial).members["model.onnx"] == lowered.onnx

    def test_one_target(self, xor_spec, monkeypatch):
        monkeypatch.setattr(afc.compile, "THREADED_LOWERING_BYTES", 0)
        lowered = lower_agent(xor_spec, targets=("wasm",))
        assert lowered.onnx is None and lowered.opset is None and "model.onnx" not in lowered.digests
        read_bundle(compile_agent(xor_spec, targets=("wasm",)))

    def test_lowering_errors_propagate(self, xor_spec, monkeypatch):
        from afcore.errors import LoweringError

        monkeypatch.setattr(afc.compile, "THREADED_LOWERING_BYTES", 0)
        monkeypatch.setattr(afc.compile, "WASM_MAX_BATCH", 0)
        with pytest.raises(LoweringError) as info:
            lower_agent(xor_spec)
        assert info.value.code == "AF3102"


class TestWriteBundleFile:
    def test_size_and_digest_are_the_files(self, xor_spec, tmp_path):
        import hashlib

        path = tmp_path / "deep" / "x.afb"
        size, digest, members = write_bundle_file(path, xor_spec, lower_agent(xor_spec))
        data = path.read_bytes()
        assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
        assert data == compile_agent(xor_spec)
        assert members == {entry["name"]: entry["size"] for entry in read_bundle(data).manifest["members"]}

    def test_synced_as_it_goes(self, xor_spec, tmp_path, monkeypatch):
        import os

        synced = []
        real = os.fdatasync
        monkeypatch.setattr(afc.compile, "SYNC_BYTES", 1)
        monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
        write_bundle_file(tmp_path / "x.afb", xor_spec, lower_agent(xor_spec))
        assert synced and (tmp_path / "x.afb").read_bytes() == compile_agent(xor_spec)

    def test_direct_io_writes_the_same_file(self, xor_spec, tmp_path, monkeypatch):
        import hashlib

        monkeypatch.setattr(afc.compile, "DIRECT_IO_BYTES", 0)
        monkeypatch.setattr(afc.compile, "_DIRECT_BUFFER", 8192)  # several full buffers, then a padded tail
        opened = []

        class Spy(afc.compile._DirectFile):
            def __init__(self, fd):
                opened.append(fd)
                super().__init__(fd)

        monkeypatch.setattr(afc.compile, "_DirectFile", Spy)
        path = tmp_path / "x.afb"
        size, digest, _ = write_bundle_file(path, xor_spec, lower_agent(xor_spec))
        data = path.read_bytes()
        assert opened, "the file was not opened with O_DIRECT"
        assert data == compile_agent(xor_spec)
        assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())

    def test_direct_write_error_is_af3006_and_leaves_nothing(self, xor_spec, tmp_path, monkeypatch):
        import errno
        import os

        from afcore.errors import LoweringError

        monkeypatch.setattr(afc.compile, "DIRECT_IO_BYTES", 0)

        def disk_full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", disk_full)
        with pytest.raises(LoweringError) as info:
            write_bundle_file(tmp_path / "x.afb", xor_spec, lower_agent(xor_spec))
        assert info.value.code == "AF3006" and "No space left" in info.value.message
        assert list(tmp_path.iterdir()) == []

    def test_direct_file_falls_back_when_refused(self, tmp_path, monkeypatch):
        import errno
        import os

        from afc.compile import _DirectFile

        monkeypatch.setattr(afc.compile, "_DIRECT_BUFFER", 4096)
        path = tmp_path / "x.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
        real_write, refused = os.write, []

        def refuse_direct(fd, data):  # as a file system without direct I/O does
            import fcntl

            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                refused.append(fd)
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", refuse_direct)
        payload = bytes(range(256)) * 40  # 10240 bytes: two full buffers and a tail
        with _DirectFile(fd) as out:
            assert out.write(payload) == len(payload)
            out.flush()
        assert refused and path.read_bytes() == payload

    def test_write_error_is_af3006_and_leaves_nothing(self, xor_spec, tmp_path, monkeypatch):
        from afcore.errors import LoweringError

        import os

        real_fdopen = os.fdopen

        class DiskFull:
            def __init__(self, fd, mode):
                self.file = real_fdopen(fd, mode)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def write(self, data):
                raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fdopen", DiskFull)
        with pytest.raises(LoweringError) as info:
            write_bundle_file(tmp_path / "x.afb", xor_spec, lower_agent(xor_spec))
        assert info.value.code == "AF3006"
        assert list(tmp_path.iterdir()) == []


class TestTargets:
    def test_parse(self):
        assert parse_targets("wasm,onnx") == ("onnx", "wasm")
        assert parse_targets(["onnx"]) == ("onnx",)

    @pytest.mark.parametrize("bad", ["", "onnx,tflite"])
    def test_unknown(self, bad):
        with pytest.raises(UsageError) as info:
            parse_targets(bad)
        assert info.value.code == "AF3004"


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
class TestExamples:
    def test_compiles_and_backends_agree(self, name, example_bundles, wasm_runner):
        bundle = read_bundle(example_bundles[name])
        jsonschema.Draft202012Validator(SCHEMA).validate(bundle.manifest)
        network = bundle.manifest["network"]
        width, out = network["input"]["shape"][1], network["output"]["shape"][1]
        x = np.random.default_rng(5).uniform(-1, 1, (100, width)).astype(np.float32)
        got_onnx = onnx_run(bundle.members["model.onnx"], x)
        got_wasm = wasm_runner(bundle.members["model.wasm"], x, out)
        np.testing.assert_allclose(got_wasm, got_onnx, rtol=1e-5, atol=1e-5)
