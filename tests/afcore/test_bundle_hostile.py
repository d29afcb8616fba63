"""Hostile bundles are refused within bounded memory (issue 9 #12).

The bundles are generated here, in a temporary directory, by stream-compressing zeros (a 2 GiB
member compresses to about 65 KB); each is read in a fresh interpreter that reports its peak RSS.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import zstandard

from afcore.bundle import MANIFEST_NAME, read_bundle, write_bundle
from afcore.errors import BundleError

ROOT = Path(__file__).resolve().parents[2]
#: what refusing any hostile bundle may cost, whole process included (issue 9 #12)
PEAK_LIMIT_MB = 300
MiB = 1 << 20
_ZEROS = bytes(16 * MiB)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def write_hostile(path: Path, listed: list[dict], members: list[tuple[str, int | bytes]]) -> Path:
    """Stream a tar (manifest listing ``listed``, then ``members``: bytes, or a count of zeros) through zstd."""
    manifest = json.dumps({"format": "afb", "format_version": "1.0", "members": listed}).encode()
    with open(path, "wb") as out, zstandard.ZstdCompressor(level=1, write_checksum=True).stream_writer(out) as zst:
        for name, data in [(MANIFEST_NAME, manifest), *members]:
            size = data if isinstance(data, int) else len(data)
            zst.write(_header(name, size))
            if isinstance(data, bytes):
                zst.write(data)
            else:
                for start in range(0, size, len(_ZEROS)):
                    zst.write(memoryview(_ZEROS)[: min(len(_ZEROS), size - start)])
            zst.write(bytes(-size % tarfile.BLOCKSIZE))
        zst.write(bytes(2 * tarfile.BLOCKSIZE))
    return path


def entry(name: str, size: int, sha256: str | None = None) -> dict:
    return {"name": name, "size": size, "sha256": sha256 or hashlib.sha256(b"something else").hexdigest()}


def read_in_subprocess(path: Path, **kwargs) -> tuple[str, float]:
    """Read ``path`` with read_bundle in a fresh interpreter; return (error code or "ok", peak RSS in MB).

    The peak is /proc's VmHWM where there is one: ``ru_maxrss`` keeps the parent's high-water mark
    across the exec (Linux copies it from the old memory map, which a vfork shares with pytest), so
    in a full test run it reported pytest's ~420 MB, not the child's ~32 MB.
    """
    script = textwrap.dedent(f"""
        import resource, sys
        from afcore.bundle import read_bundle
        from afcore.errors import BundleError
        try:
            read_bundle(sys.argv[1], **{kwargs!r})
            code = "ok"
        except BundleError as error:
            code = error.code
        try:  # this process's own high-water mark
            with open("/proc/self/status") as status:
                peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        except OSError:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(code, peak_kb / 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    code, peak = done.stdout.split()
    return code, float(peak)


SMALL = b"onnx"


class TestHostileBundles:
    def test_unlisted_2gib_member_is_refused_before_it_is_inflated(self, tmp_path):
        path = write_hostile(tmp_path / "unlisted.afb", [entry("model.onnx", 4, hashlib.sha256(SMALL).hexdigest())],
                             [("model.onnx", SMALL), ("evil.bin", 2048 * MiB)])
        assert path.stat().st_size < 100_000
        code, peak = read_in_subprocess(path)
        assert code == "AF4011" and peak < PEAK_LIMIT_MB

    def test_declared_3gib_is_refused_at_the_manifest(self, tmp_path):
        path = write_hostile(tmp_path / "declared.afb", [entry("model.onnx", 3072 * MiB)],
                             [("model.onnx", 3072 * MiB)])
        assert path.stat().st_size < 150_000
        code, peak = read_in_subprocess(path)
        assert code == "AF4003" and peak < PEAK_LIMIT_MB

    def test_a_big_member_with_a_wrong_digest_is_refused_without_being_kept(self, tmp_path):
        # within the default cap, so only its sha256 can refuse it: it is verified before it is kept
        path = write_hostile(tmp_path / "digest.afb", [entry("model.onnx", 600 * MiB)], [("model.onnx", 600 * MiB)])
        code, peak = read_in_subprocess(path)
        assert code == "AF4013" and peak < PEAK_LIMIT_MB

    def test_a_header_bigger_than_listed_is_refused_before_its_data(self, tmp_path):
        path = write_hostile(tmp_path / "size.afb", [entry("model.onnx", 4)], [("model.onnx", 900 * MiB)])
        code, peak = read_in_subprocess(path)
        assert code == "AF4013" and peak < PEAK_LIMIT_MB

    def test_raising_the_cap_lets_a_big_listing_through_to_its_digest_check(self, tmp_path):
        path = write_hostile(tmp_path / "raised.afb", [entry("model.onnx", 80 * MiB)], [("model.onnx", 80 * MiB)])
        assert read_in_subprocess(path, max_total_bytes=64 * MiB)[0] == "AF4003"
        code, peak = read_in_subprocess(path, max_total_bytes=4 << 30)
        assert code == "AF4013" and peak < PEAK_LIMIT_MB

    def test_a_file_far_past_the_cap_is_refused_unread(self, tmp_path):
        path = tmp_path / "huge.afb"
        with open(path, "wb") as out:
            out.write(b"\x28\xb5\x2f\xfd")
            out.truncate(64 << 30)  # sparse: reading it would take minutes and 64 GiB
        code, peak = read_in_subprocess(path)
        assert code == "AF4003" and peak < PEAK_LIMIT_MB

    def test_oversized_manifest(self, tmp_path, monkeypatch):
        from afcore import bundle

        monkeypatch.setattr(bundle, "MAX_MANIFEST_BYTES", 1000)
        path = write_hostile(tmp_path / "m.afb", [entry(f"m{k}", 1) for k in range(100)], [])
        with pytest.raises(bundle.BundleError) as info:
            read_bundle(path)
        assert info.value.code == "AF4023"


class TestStreamedReading:
    """Archives past IN_MEMORY_BYTES are streamed, and verified in a first pass that keeps nothing."""

    def test_two_passes_give_the_same_members(self, tmp_path, monkeypatch):
        from afcore import bundle

        members = {"model.onnx": bytes(range(256)) * 64, "model.wasm": b"\0asm" * 1000}
        data = write_bundle({"format": "afb", "format_version": "1.0"}, members)
        expected = read_bundle(data)
        passes = []
        real = bundle._read_members
        monkeypatch.setattr(bundle, "IN_MEMORY_BYTES", 1024)
        monkeypatch.setattr(bundle, "_read_members", lambda *a, **k: passes.append(k) or real(*a, **k))
        streamed = read_bundle(data)
        assert [(k["keep"] is not None, k["verify"]) for k in passes] == [(False, True), (True, False)]
        assert streamed == expected

    def test_tampered_member_is_found_in_the_first_pass(self, monkeypatch):
        from afcore import bundle

        monkeypatch.setattr(bundle, "IN_MEMORY_BYTES", 1024)
        data = write_bundle({"format": "afb", "format_version": "1.0"}, {"model.onnx": bytes(5000)})
        tampered = bytearray(zstandard.ZstdDecompressor().decompress(data))
        tampered[tampered.find(b"model.onnx\0") + tarfile.BLOCKSIZE + 10] = 1  # a byte of model.onnx's data
        with pytest.raises(bundle.BundleError) as info:
            read_bundle(zstandard.ZstdCompressor(write_checksum=True).compress(bytes(tampered)))
        assert info.value.code == "AF4013"


class TestKeepAndSpill:
    """read_bundle(keep=, spill_over=): what af run reads of a bundle (only its model, a big one in a file)."""

    MEMBERS = {"model.onnx": bytes(range(256)) * 64, "model.wasm": b"\0asm" * 1000, "agent.yaml": b"name: a\n"}

    def test_members_left_out_are_verified_all_the_same(self):
        data = write_bundle({"format": "afb", "format_version": "1.0"}, self.MEMBERS)
        kept = read_bundle(data, keep=lambda manifest: {"model.onnx"})
        assert dict(kept.members) == {"model.onnx": self.MEMBERS["model.onnx"]}
        assert kept.left_out == {"model.wasm", "agent.yaml"}
        with pytest.raises(BundleError) as info:  # a member that fails its sha256 is refused even when not kept
            read_bundle(_swap_member(data, "model.wasm", b"\0asm" * 999 + b"evil"), keep={"model.onnx"})
        assert info.value.code == "AF4013"

    @pytest.mark.parametrize("in_memory_bytes", [None, 1024])
    def test_a_big_member_goes_to_a_private_file_removed_with_it(self, monkeypatch, in_memory_bytes):
        import os
        import stat

        from afcore import bundle

        if in_memory_bytes:
            monkeypatch.setattr(bundle, "IN_MEMORY_BYTES", in_memory_bytes)
        data = write_bundle({"format": "afb", "format_version": "1.0"}, self.MEMBERS)
        read = read_bundle(data, keep={"model.onnx", "agent.yaml"}, spill_over=1000)
        spilled = read.members["model.onnx"]
        assert isinstance(spilled, bundle.MemberFile) and read.members["agent.yaml"] == b"name: a\n"
        assert spilled.read_bytes() == self.MEMBERS["model.onnx"] and len(spilled) == len(self.MEMBERS["model.onnx"])
        directory = os.path.dirname(spilled.path)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        spilled.remove()
        assert not os.path.exists(directory)

    def test_a_spilled_member_that_fails_its_digest_leaves_no_file(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        import tempfile

        monkeypatch.setattr(tempfile, "tempdir", None)
        good = write_bundle({"format": "afb", "format_version": "1.0"}, self.MEMBERS)
        bad = _swap_member(good, "model.onnx", bytes(reversed(self.MEMBERS["model.onnx"])))
        with pytest.raises(BundleError) as info:
            read_bundle(bad, keep={"model.onnx"}, spill_over=1000)
        assert info.value.code == "AF4013"
        import gc

        gc.collect()
        assert not list(tmp_path.glob("af-member-*/*"))


def _swap_member(data: bytes, name: str, replacement: bytes) -> bytes:
    """The bundle with one member's bytes replaced (same size), its manifest unchanged."""
    import zstandard

    archive = zstandard.ZstdDecompressor().decompress(data)
    from afcore import bundle

    original = bundle.read_bundle(data).members[name]
    assert len(original) == len(replacement) and archive.count(original) == 1
    return zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(
        archive.replace(original, replacement))
