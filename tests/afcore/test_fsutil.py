"""The one atomic writer (afcore.fsutil) and every af writer that must go through it."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from afcore import fsutil
from afcore.errors import AfError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "xor.af"


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if fsutil.TEMP_RE.fullmatch(p.name))


class TestAtomicOutput:
    def test_writes_renames_and_syncs_the_directory(self, tmp_path, monkeypatch):
        synced = []
        monkeypatch.setattr(fsutil, "_fsync_directory", synced.append)
        fsutil.write_file_atomic(tmp_path / "a.bin", b"one")
        fsutil.write_file_atomic(tmp_path / "a.bin", b"two")
        assert (tmp_path / "a.bin").read_bytes() == b"two"
        assert synced == [tmp_path, tmp_path]
        assert _temporaries(tmp_path) == []

    def test_keeps_the_mode_of_an_existing_file_or_takes_the_given_one(self, tmp_path):
        target = tmp_path / "a"
        target.write_bytes(b"old")
        target.chmod(0o640)
        fsutil.write_file_atomic(target, b"new")
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        fsutil.write_file_atomic(target, b"newer", mode=0o600)
        assert stat.S_IMODE(target.stat().st_mode) == 0o600

    def test_exclusive_keeps_an_existing_file(self, tmp_path):
        target = tmp_path / "key"
        fsutil.write_file_atomic(target, b"first", exclusive=True)
        fsutil.write_file_atomic(target, b"second", exclusive=True)
        assert target.read_bytes() == b"first"
        assert _temporaries(tmp_path) == []

    def test_failure_mid_write_keeps_the_old_file_and_no_temporary(self, tmp_path):
        target = tmp_path / "a"
        target.write_bytes(b"old")
        with pytest.raises(RuntimeError):
            with fsutil.atomic_output(target) as out:
                os.write(out.fd, b"half of the new")
                raise RuntimeError("killed")
        assert target.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["a"]

    def test_temporaries_match_the_one_pattern(self, tmp_path):
        with fsutil.atomic_output(tmp_path / "checkpoint.afs") as out:
            assert fsutil.TEMP_RE.fullmatch(out.path.name)
            assert out.path.parent == tmp_path


class TestCleanStaleTemporaries:
    def test_removes_only_temporaries(self, tmp_path):
        left = [".checkpoint.afs.k2j_8x0a.tmp", ".abc.cwasm.zzzzzzzz.tmp"]
        kept = ["checkpoint.afs", ".lock", "notes.tmp", ".x.tmp"]
        for name in left + kept:
            (tmp_path / name).write_bytes(b"x")
        assert fsutil.clean_stale_temporaries(tmp_path) == 2
        assert sorted(os.listdir(tmp_path)) == sorted(kept)

    def test_older_than_spares_a_fresh_temporary(self, tmp_path):
        old, fresh = tmp_path / ".a.11111111.tmp", tmp_path / ".b.22222222.tmp"
        old.write_bytes(b"x")
        fresh.write_bytes(b"x")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        assert fsutil.clean_stale_temporaries(tmp_path, older_than=3600) == 1
        assert os.listdir(tmp_path) == [fresh.name]

    def test_missing_directory(self, tmp_path):
        assert fsutil.clean_stale_temporaries(tmp_path / "nope") == 0

    def test_state_dir_is_cleaned_when_locked(self, tmp_path):
        from afrt.state import lock_state_dir

        stale = tmp_path / ".checkpoint.afs.abcd1234.tmp"  # what SIGKILL left mid-checkpoint
        tmp_path.mkdir(exist_ok=True)
        stale.write_bytes(b"half a checkpoint")
        os.close(lock_state_dir(tmp_path))
        assert not stale.exists()

    def test_module_cache_is_cleaned_when_opened(self, tmp_path):
        from afrt.modcache import STALE_TEMPORARY_SECONDS, ModuleCache

        stale, fresh = tmp_path / ".x.cwasm.abcd1234.tmp", tmp_path / ".y.cwasm.abcd1234.tmp"
        for path in (stale, fresh):
            path.write_bytes(b"x")
        then = time.time() - STALE_TEMPORARY_SECONDS - 60
        os.utime(stale, (then, then))
        ModuleCache(tmp_path)
        assert (stale.exists(), fresh.exists()) == (False, True)


# --------------------------------------------------------------------------- every writer


def _write_af(directory: Path) -> Path:
    from afc.writer import write_af_file

    target = directory / "agent.af"
    write_af_file(target, EXAMPLE.read_bytes(), code="AF0914")
    return target


def _write_bundle(directory: Path) -> Path:
    from afc import load_agent_file
    from afc.compile import lower_agent, write_bundle_file

    spec = load_agent_file(EXAMPLE).spec()
    target = directory / "agent.afb"
    write_bundle_file(target, spec, lower_agent(spec, targets=("onnx",)))
    return target


def _write_checkpoint(directory: Path) -> Path:
    from afrt.state import CHECKPOINT_NAME, Identity, write_checkpoint

    write_checkpoint(directory, Identity.generate("a"), {"memory": {"n": 1}})
    return directory / CHECKPOINT_NAME


def _write_module_cache(directory: Path) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "afrt"))
    from afrt_testkit import random_weights, wasm_module

    from afrt.modcache import ModuleCache

    cache = ModuleCache(directory)
    wasm = wasm_module(random_weights((3, 2), seed=3))
    module = cache.load(wasm)
    if not cache.stats.compiles:  # a cache hit writes nothing: write the entry again
        cache._write(cache.path_for(wasm), module)
    if cache.stats.write_errors:
        raise OSError("the module cache could not write")
    return cache.path_for(wasm)


WRITERS = {"af": _write_af, "bundle": _write_bundle, "checkpoint": _write_checkpoint, "modcache": _write_module_cache}


class TestEveryWriter:
    @pytest.mark.parametrize("kind", sorted(WRITERS))
    def test_goes_through_the_helper_and_syncs_the_directory(self, tmp_path, monkeypatch, kind):
        synced = []
        monkeypatch.setattr(fsutil, "_fsync_directory", synced.append)
        target = WRITERS[kind](tmp_path)
        assert target.exists()
        # the module cache writes its key file, then the module
        assert synced == [tmp_path] * (2 if kind == "modcache" else 1)

    @pytest.mark.parametrize("kind", sorted(WRITERS))
    def test_failure_mid_write_keeps_the_old_file_and_no_temporary(self, tmp_path, monkeypatch, kind):
        target = WRITERS[kind](tmp_path)
        before = target.read_bytes()
        names = sorted(os.listdir(tmp_path))

        def disk_full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(fsutil, "_fsync_file", disk_full)
        with pytest.raises((AfError, OSError)):
            WRITERS[kind](tmp_path)
        assert target.read_bytes() == before
        assert sorted(os.listdir(tmp_path)) == names
