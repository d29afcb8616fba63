"""The loader: bundle -> LoadedBundle, and what it refuses."""

from __future__ import annotations

import copy

import pytest
from afrt_testkit import bundle_object, make_bundle

from afcore.bundle import Bundle
from afcore.errors import BundleError, UsageError
from afrt.loader import LoadedBundle, load_bundle


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return bundle_object(make_bundle((6, 5, 3))[0])


def altered(bundle: Bundle, edit) -> Bundle:
    manifest = copy.deepcopy(bundle.manifest)
    edit(manifest)
    return Bundle(manifest=manifest, members=bundle.members, digest=bundle.digest)


class TestLoadBundle:
    def test_fields(self, bundle):
        loaded = load_bundle(bundle)
        assert isinstance(loaded, LoadedBundle)
        assert (loaded.name, loaded.version) == ("test-agent", "1.0")
        assert (loaded.input_name, loaded.output_name) == ("input", "output")
        assert (loaded.input_size, loaded.output_size) == (6, 3)
        assert loaded.layers == ((6, 5), (5, 3))
        assert loaded.targets == ("onnx", "wasm")
        assert loaded.limit("memory_mb") == 64 and loaded.limit("gpu") is None
        assert loaded.member("wasm")[:4] == b"\0asm"
        assert [s.name for s in loaded.workflows["execution"]] == ["process_neural_network", "send_output"]

    def test_reads_paths_and_bytes_through_afcore(self, tmp_path):
        data, _ = make_bundle((6, 5, 3))
        path = tmp_path / "agent.afb"
        path.write_bytes(data)
        assert load_bundle(path).digest == load_bundle(data).digest == load_bundle(str(path)).digest

    def test_container_errors_come_from_afcore(self):
        data, _ = make_bundle((6, 5, 3))
        with pytest.raises(BundleError) as info:
            load_bundle(data[:-10])
        assert info.value.code.startswith("AF40")

    def test_size_cap_is_passed_on(self):
        data, _ = make_bundle((6, 5, 3))
        with pytest.raises(BundleError) as info:
            load_bundle(data, max_total_bytes=1000)
        assert info.value.code == "AF4003"

    def test_unsupported_format_version(self, bundle):
        with pytest.raises(BundleError) as info:
            load_bundle(altered(bundle, lambda m: m.update(format_version="2.0")))
        assert info.value.code == "AF4010"

    @pytest.mark.parametrize(
        "edit, where",
        [
            (lambda m: m["agent"].pop("name"), "agent.name"),
            (lambda m: m["network"]["input"].update(shape=[None]), "network.input.shape"),
            (lambda m: m["network"]["input"].update(dtype="float16"), "network.input.dtype"),
            (lambda m: m["network"]["output"].update(shape=[None, 0]), "network.output.shape"),
            (lambda m: m["network"]["layers"][1].update(out="3"), "network.layers[1]"),
            (lambda m: m.update(targets="onnx"), "targets"),
            (lambda m: m["workflows"].update(execution="receive_input"), "workflows.execution"),
            (lambda m: m["workflows"]["execution"].append({"name": 3}), "workflows.execution"),
        ],
    )
    def test_malformed_manifest(self, bundle, edit, where):
        with pytest.raises(BundleError) as info:
            load_bundle(altered(bundle, edit))
        assert info.value.code == "AF4018"
        assert f"`{where}`" in info.value.message

    def test_missing_target(self):
        loaded = load_bundle(make_bundle((6, 5, 3), targets=("onnx",))[0])
        with pytest.raises(BundleError) as info:
            loaded.member("wasm")
        assert info.value.code == "AF5044"
        assert "--target wasm" in info.value.hint

    def test_not_a_bundle(self):
        with pytest.raises(UsageError) as info:
            load_bundle(42)
        assert info.value.code == "AF5090"
