"""`afcore.manifest.Manifest`: the one parser of manifest.json, for the emitter, the loader and `af inspect`."""

from __future__ import annotations

import copy
import hashlib

import pytest

from afcore.bundle import read_bundle
from afcore.errors import BundleError
from afcore.manifest import LayerInfo, Manifest, MemberEntry, TensorInfo

SHA = hashlib.sha256(b"x").hexdigest()


def minimal() -> dict:
    """The fields the format requires; the informational ones are left out."""
    return {
        "format": "afb",
        "format_version": "1.0",
        "agent": {"name": "a", "version": "1"},
        "network": {
            "input": {"name": "input", "dtype": "float32", "shape": [None, 3]},
            "output": {"name": "output", "dtype": "float32", "shape": [None, 2]},
            "layers": [{"in": 3, "out": 2}],
        },
        "targets": ["onnx"],
        "onnx": {"member": "model.onnx", "opset": 17, "ir_version": 9},
        "members": [{"name": "model.onnx", "size": 1, "sha256": SHA}],
    }


def code_and_message(data: dict) -> tuple[str, str]:
    with pytest.raises(BundleError) as info:
        Manifest.from_json(data)
    return info.value.code, info.value.message


class TestManifest:
    def test_compiled_manifests_round_trip_exactly(self, example_bundles):
        for path in example_bundles.values():
            data = read_bundle(path).manifest
            assert Manifest.from_json(data).to_json() == data

    def test_compiled_manifests_follow_the_schema(self, example_bundles):
        # the schema documents the format; Manifest.from_json is what checks it at run time
        import json
        from importlib import resources

        import jsonschema

        schema = json.loads(resources.files("afcore.schemas").joinpath("afb-manifest-1.0.schema.json").read_text())
        for path in example_bundles.values():
            jsonschema.validate(read_bundle(path).manifest, schema)

    def test_typed_fields(self):
        manifest = Manifest.from_json(minimal())
        assert manifest.network.input == TensorInfo("input", 3)
        assert manifest.network.layers == (LayerInfo(0, 3, 2, "", 8),)
        assert manifest.members == (MemberEntry("model.onnx", 1, SHA),)
        assert manifest.target_member("onnx") == "model.onnx" and manifest.target_member("wasm") is None
        assert manifest.workflows == {"initialization": (), "execution": (), "shutdown": ()}

    def test_unknown_keys_are_kept(self):
        data = {**minimal(), "x-tool": {"k": 1}}
        assert Manifest.from_json(data).to_json()["x-tool"] == {"k": 1}

    @pytest.mark.parametrize(
        "edit, where",
        [
            (lambda m: m["agent"].pop("name"), "agent.name"),
            (lambda m: m["agent"].update(author=3), "agent.author"),
            (lambda m: m["network"]["input"].update(shape=[None, True]), "network.input.shape"),
            (lambda m: m["network"].update(layers=[{"index": 0}]), "network.layers[0]"),
            (lambda m: m["network"]["layers"][0].update(activation=1), "network.layers[0].activation"),
            (lambda m: m.update(targets=["onnx", "tpu"]), "targets"),
            (lambda m: m.update(resources={"limits": {"memory_mb": "64"}}), "resources.limits.memory_mb"),
            (lambda m: m.update(wasm={"member": "model.wasm", "abi": 1, "max_batch": 0, "memory_pages": 1}),
             "wasm.max_batch"),
            (lambda m: m.update(workflows={"execution": [{"name": None}]}), "workflows.execution"),
        ],
    )
    def test_a_malformed_field_is_named(self, edit, where):
        data = copy.deepcopy(minimal())
        edit(data)
        code, message = code_and_message(data)
        assert code == "AF4018" and f"`{where}`" in message

    @pytest.mark.parametrize(
        "edit, code",
        [
            (lambda m: m.update(format_version="2.0"), "AF4010"),
            (lambda m: m.update(format="zip"), "AF4010"),
            (lambda m: m.update(members=[{"name": "a", "size": -1, "sha256": SHA}]), "AF4014"),
            (lambda m: m.update(members=[{"name": "a", "size": 1, "sha256": "nothex"}]), "AF4014"),
        ],
    )
    def test_container_faults_keep_their_codes(self, edit, code):
        data = copy.deepcopy(minimal())
        edit(data)
        assert code_and_message(data)[0] == code


class TestAgentName:
    """The agent's name becomes a directory under --state-dir: a hostile manifest cannot escape it."""

    @pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 65, "a\x00b"])
    def test_names_the_schema_would_refuse_are_af4018(self, name):
        data = minimal()
        data["agent"]["name"] = name
        with pytest.raises(BundleError) as info:
            Manifest.from_json(data)
        assert info.value.code == "AF4018" and "agent.name" in info.value.message
