"""The compiled-module cache: a second start does not compile, and only our own files are used."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from afrt_testkit import abi_module, make_bundle, random_weights, wasm_module

import afrt
from afcore.errors import BundleError, SandboxViolation
from afrt import modcache
from afrt.modcache import ModuleCache

WASM = wasm_module(random_weights((6, 5, 3), seed=1))


class TestModuleCache:
    def test_second_load_deserializes_instead_of_compiling(self, tmp_path):
        first = ModuleCache(tmp_path)
        first.load(WASM)
        assert (first.stats.compiles, first.stats.hits) == (1, 0)
        second = ModuleCache(tmp_path)
        module = second.load(WASM)
        assert (second.stats.compiles, second.stats.hits, second.stats.rejected) == (0, 1, 0)
        assert {e.name for e in module.exports} >= {"infer", "memory"}

    def test_file_layout_and_permissions(self, tmp_path):
        cache = ModuleCache(tmp_path / "c")
        cache.load(WASM)
        path = cache.path_for(WASM)
        assert path.read_bytes().startswith(modcache.MAGIC)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "c" / modcache.KEY_NAME).st_mode) == 0o600
        assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".tmp-")]

    def test_key_depends_on_module_and_engine(self, tmp_path, monkeypatch):
        cache = ModuleCache(tmp_path)
        other = wasm_module(random_weights((6, 5, 3), seed=2))
        assert cache.path_for(WASM) != cache.path_for(other)
        before = cache.path_for(WASM)
        monkeypatch.setattr(modcache, "engine_fingerprint", lambda: "wasmtime=51.0.0;other")
        assert cache.path_for(WASM) != before

    @pytest.mark.parametrize("damage", ["flip", "truncate", "magic"])
    def test_tampered_file_is_recompiled_not_deserialized(self, tmp_path, damage):
        ModuleCache(tmp_path).load(WASM)
        cache = ModuleCache(tmp_path)
        path = cache.path_for(WASM)
        blob = bytearray(path.read_bytes())
        if damage == "flip":
            blob[-100] ^= 0xFF
        elif damage == "truncate":
            blob = blob[: len(blob) // 2]
        else:
            blob[:4] = b"XXXX"
        path.write_bytes(bytes(blob))
        cache.load(WASM)
        assert (cache.stats.rejected, cache.stats.compiles, cache.stats.hits) == (1, 1, 0)
        assert ModuleCache(tmp_path).load(WASM) is not None  # rewritten, valid again

    def test_file_from_another_machine_is_refused(self, tmp_path):
        mine, theirs = ModuleCache(tmp_path / "mine"), ModuleCache(tmp_path / "theirs")
        mine.load(b"\0asm\1\0\0\0")  # creates my key
        theirs.load(WASM)
        mine.path_for(WASM).write_bytes(theirs.path_for(WASM).read_bytes())
        mine.load(WASM)
        assert (mine.stats.rejected, mine.stats.hits) == (1, 0)

    def test_unwritable_directory_only_costs_a_compile(self, tmp_path):
        blocked = tmp_path / "file"
        blocked.write_text("not a directory")
        cache = ModuleCache(blocked / "modules")
        assert cache.load(WASM) is not None
        assert (cache.stats.compiles, cache.stats.write_errors) == (1, 1)

    def test_invalid_module_is_a_bundle_error_and_not_cached(self, tmp_path):
        cache = ModuleCache(tmp_path)
        with pytest.raises(BundleError) as info:
            cache.load(b"\0asm\1\0\0\0garbage")
        assert info.value.code == "AF5045"
        assert not cache.path_for(b"\0asm\1\0\0\0garbage").exists()

    def test_serialized_code_in_a_bundle_is_never_deserialized(self, tmp_path):
        # A bundle carrying precompiled machine code instead of wasm is compiled (and fails), never loaded.
        cache = ModuleCache(tmp_path)
        cache.load(WASM)
        precompiled = cache.path_for(WASM).read_bytes()[len(modcache.MAGIC) + 32 :]
        data, _ = make_bundle((6, 5, 3), wasm_bytes=precompiled)
        with pytest.raises(BundleError) as info:
            afrt.load(data, backend="wasm", cache_dir=tmp_path)
        assert info.value.code == "AF5045"

    def test_default_directory(self, monkeypatch, tmp_path):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert modcache.default_cache_dir() == tmp_path / "af" / "modules"
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert modcache.default_cache_dir() == tmp_path / "home" / ".cache" / "af" / "modules"

    def test_agents_from_cache_compute_the_same(self, tmp_path):
        data, _ = make_bundle((6, 5, 3), seed=1)
        x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
        compiled = afrt.load(data, backend="wasm", cache_dir=tmp_path).infer(x)
        cached = afrt.load(data, backend="wasm", cache_dir=tmp_path).infer(x)
        np.testing.assert_array_equal(compiled, cached)

    def test_policy_is_checked_on_cached_modules_too(self, tmp_path):
        wasm = abi_module("(i32.const 0)", n_in=4, n_out=2, imports='(import "env" "f" (func))')
        ModuleCache(tmp_path).load(wasm)  # cached despite the import: the cache holds compiled code only
        data, _ = make_bundle((4, 2), wasm_bytes=wasm, targets=("wasm",))
        with pytest.raises(SandboxViolation) as info:
            afrt.load(data, backend="wasm", cache_dir=tmp_path)
        assert info.value.code == "AF5020"
