"""The bundle container: round trip, reproducibility, and every refusal on archives crafted here."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import pytest
import zstandard

from afcore.bundle import FORMAT_VERSION, MANIFEST_NAME, Bundle, read_bundle, write_bundle
from afcore.errors import BundleError

MANIFEST = {"format": "afb", "format_version": FORMAT_VERSION, "agent": {"name": "t", "version": "1"}}
MEMBERS = {
    "agent.yaml": b"name: t\n",
    "model.onnx": b"onnx-bytes",
    "weights.safetensors": bytes(range(256)) * 40,
    "model.wasm": b"\0asm\1\0\0\0",
}


def entry(name: str, data: bytes) -> dict:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def craft(items: list[tuple[tarfile.TarInfo, bytes | None]], *, level: int = 3) -> bytes:
    """Write a tar from (TarInfo, data) pairs by hand and zstd-compress it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(raw.getvalue())


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def manifest_member(listed: list[dict], **extra) -> tuple[tarfile.TarInfo, bytes]:
    return regular(MANIFEST_NAME, json.dumps({**MANIFEST, "members": listed, **extra}).encode())


def code_of(data: bytes, **kwargs) -> str:
    with pytest.raises(BundleError) as info:
        read_bundle(data, **kwargs)
    return info.value.code


class TestRoundTrip:
    def test_read_returns_what_was_written(self):
        data = write_bundle(MANIFEST, MEMBERS)
        bundle = read_bundle(data)
        assert isinstance(bundle, Bundle)
        assert dict(bundle.members) == MEMBERS
        assert bundle.digest == hashlib.sha256(data).hexdigest()
        assert {k: v for k, v in bundle.manifest.items() if k != "members"} == MANIFEST

    def test_manifest_lists_members_sorted_with_digests(self):
        manifest = read_bundle(write_bundle(MANIFEST, MEMBERS)).manifest
        assert manifest["members"] == [entry(n, MEMBERS[n]) for n in sorted(MEMBERS)]

    def test_reads_from_a_path(self, tmp_path):
        path = tmp_path / "a.afb"
        path.write_bytes(write_bundle(MANIFEST, MEMBERS))
        assert dict(read_bundle(path).members) == MEMBERS
        assert dict(read_bundle(str(path)).members) == MEMBERS

    def test_the_callers_manifest_is_not_changed(self):
        manifest = dict(MANIFEST)
        write_bundle(manifest, MEMBERS)
        assert "members" not in manifest


class TestLayout:
    def test_member_order_and_tar_metadata(self):
        raw = zstandard.ZstdDecompressor().decompress(write_bundle(MANIFEST, {**MEMBERS, "sections/x": b"1"}))
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            infos = tar.getmembers()
        assert [i.name for i in infos] == [
            "manifest.json", "model.onnx", "model.wasm", "weights.safetensors", "agent.yaml", "sections/x",
        ]
        for info in infos:
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
            assert info.isreg()

    def test_reproducible_bytes(self):
        shuffled = dict(reversed(list(MEMBERS.items())))
        assert write_bundle(MANIFEST, MEMBERS) == write_bundle(dict(reversed(list(MANIFEST.items()))), shuffled)

    def test_same_bytes_for_any_zstd_worker_count(self):
        # the writer uses every core; zstd promises identical frames for any worker count >= 1
        from afcore.bundle import _compressor

        parts = [bytes(range(256)) * 30_000, b"tail" * 1000]

        def frame(threads: int) -> bytes:
            stream = _compressor(threads=threads).compressobj(size=sum(map(len, parts)))
            return b"".join([*(stream.compress(p) for p in parts), stream.flush()])

        assert frame(1) == frame(2) == frame(-1)

    def test_gnu_tar_lists_it(self, tmp_path):
        path = tmp_path / "agent.afb"
        path.write_bytes(write_bundle(MANIFEST, MEMBERS))
        listing = subprocess.run(["tar", "--zstd", "-tf", str(path)], capture_output=True, text=True, check=True)
        assert listing.stdout.split() == ["manifest.json", "model.onnx", "model.wasm", "weights.safetensors",
                                          "agent.yaml"]

    def test_unsafe_names_are_not_written(self):
        for name in ("../x", "/abs", "a//b", "manifest.json", "x" * 101):
            with pytest.raises(BundleError) as info:
                write_bundle(MANIFEST, {name: b""})
            assert info.value.code == "AF4016"


class TestBufferMembers:
    """Members given as lists of buffers (views of big arrays) write the same bundle as joined bytes."""

    def test_chunked_members_same_bytes(self):
        import numpy as np

        weights = np.arange(2560, dtype=np.float32)
        chunked = {**MEMBERS, "weights.safetensors": [b"head", weights, memoryview(b"tail"), np.zeros(0, np.float32)]}
        joined = {**MEMBERS, "weights.safetensors": b"head" + weights.tobytes() + b"tail"}
        data = write_bundle(MANIFEST, chunked)
        assert data == write_bundle(MANIFEST, joined)
        assert read_bundle(data).members["weights.safetensors"] == joined["weights.safetensors"]

    def test_given_digests_are_used_and_others_computed(self):
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in MEMBERS.items() if name != "agent.yaml"}
        assert write_bundle(MANIFEST, MEMBERS, digests={**digests, "not-a-member": "00"}) == write_bundle(
            MANIFEST, MEMBERS)
        lying = write_bundle(MANIFEST, MEMBERS, digests={"model.onnx": "0" * 64})
        assert code_of(lying) == "AF4013"  # trusted when writing, checked when reading

    def test_parallel_hashing_of_big_members(self, monkeypatch):
        import afcore.bundle

        serial = write_bundle(MANIFEST, MEMBERS)
        monkeypatch.setattr(afcore.bundle, "_THREADED_HASH_BYTES", 0)
        assert write_bundle(MANIFEST, MEMBERS) == serial

    def test_input_fed_in_job_sized_slices(self, monkeypatch):
        # members bigger than a job are fed to zstd in slices; the frame must not depend on the slicing
        import afcore.bundle

        big = {**MEMBERS, "model.wasm": bytes(range(256)) * 9000}
        whole = write_bundle(MANIFEST, big)
        compressor = afcore.bundle._compressor(threads=-1)  # built with the real job size
        monkeypatch.setattr(afcore.bundle, "_compressor", lambda **options: compressor)
        monkeypatch.setattr(afcore.bundle, "JOB_SIZE", 1000)  # so this changes only the slicing
        assert write_bundle(MANIFEST, big) == whole
        assert read_bundle(whole).members["model.wasm"] == big["model.wasm"]

    def test_small_jobs_without_ldm_same_bytes_for_any_worker_count(self, monkeypatch):
        # archives past LDM_MAX_ARCHIVE_BYTES use FAST_JOB_SIZE jobs: still one frame whatever the workers
        import numpy as np

        import afcore.bundle

        monkeypatch.setattr(afcore.bundle, "LDM_MAX_ARCHIVE_BYTES", 0)
        big = {**MEMBERS, "model.wasm": np.random.default_rng(3).integers(0, 16, 5 << 20, dtype=np.uint8).tobytes()}
        real = afcore.bundle._compressor
        outputs = []
        for workers in (1, 2):
            monkeypatch.setattr(afcore.bundle, "_compressor",
                                lambda *, threads, size, workers=workers: real(threads=workers, size=size))
            outputs.append(write_bundle(MANIFEST, big))
        assert outputs[0] == outputs[1]
        assert afcore.bundle._job_size(6 << 20) == afcore.bundle.FAST_JOB_SIZE < len(big["model.wasm"])
        assert read_bundle(outputs[0]).members["model.wasm"] == big["model.wasm"]


class TestZstdSettings:
    def test_window_fits_standard_tools(self):
        # `zstd -d` / `tar --zstd` refuse windows over 128 MiB unless given --long or --memory
        import afcore.bundle

        assert afcore.bundle.WINDOW_LOG <= 27
        big = {**MEMBERS, "model.wasm": bytes(range(256)) * 40_000}
        params = zstandard.get_frame_parameters(write_bundle(MANIFEST, big))
        assert params.window_size <= 128 << 20 and params.has_checksum

    def test_long_distance_matching_only_while_repeats_fit_the_window(self, monkeypatch):
        import afcore.bundle

        weights = bytes(range(256)) * 4096 + bytes(reversed(range(256))) * 4096
        members = {"model.onnx": weights, "model.wasm": bytes(1 << 20), "weights.safetensors": weights}
        with_ldm = write_bundle(MANIFEST, members)
        monkeypatch.setattr(afcore.bundle, "LDM_MAX_ARCHIVE_BYTES", 1 << 20)
        without = write_bundle(MANIFEST, members)
        assert with_ldm != without
        assert read_bundle(with_ldm).members == read_bundle(without).members == members


class TestRefusals:
    def good_items(self) -> list[tuple[tarfile.TarInfo, bytes]]:
        data = MEMBERS["model.onnx"]
        return [manifest_member([entry("model.onnx", data)]), regular("model.onnx", data)]

    def test_crafted_good_bundle_is_accepted(self):
        assert read_bundle(craft(self.good_items())).members == {"model.onnx": MEMBERS["model.onnx"]}

    def test_not_zstd(self):
        assert code_of(b"PK\3\4 not a bundle at all") == "AF4001"

    def test_trailing_data(self):
        assert code_of(craft(self.good_items()) + b"junk") == "AF4001"

    @pytest.mark.parametrize("cut", [1, 4, 100])
    def test_truncated(self, cut):
        data = write_bundle(MANIFEST, MEMBERS)
        assert code_of(data[:-cut]) == "AF4002"

    def test_corrupt_payload(self):
        data = bytearray(write_bundle(MANIFEST, MEMBERS))
        data[len(data) // 2] ^= 0xFF
        assert code_of(bytes(data)) in ("AF4001", "AF4013")

    def test_total_size_cap(self):
        assert code_of(write_bundle(MANIFEST, MEMBERS), max_total_bytes=4096) == "AF4003"

    def test_zstd_bomb_is_capped(self):
        bomb = bytes(50_000_000)
        data = craft([manifest_member([entry("model.onnx", bomb)]), regular("model.onnx", bomb)], level=19)
        assert len(data) < 100_000
        assert code_of(data, max_total_bytes=1_000_000) == "AF4003"

    @pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../b", "./model.onnx"])
    def test_unsafe_paths(self, name):
        items = [manifest_member([entry(name, b"x")]), regular(name, b"x")]
        assert code_of(craft(items)) == "AF4004"

    @pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
    def test_links(self, kind):
        link = tarfile.TarInfo("model.onnx")
        link.type, link.linkname = kind, "/etc/passwd"
        items = [manifest_member([entry("model.onnx", b"")]), (link, None)]
        assert code_of(craft(items)) == "AF4005"

    @pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE])
    def test_devices_and_directories(self, kind):
        device = tarfile.TarInfo("model.onnx")
        device.type = kind
        items = [manifest_member([entry("model.onnx", b"")]), (device, None)]
        assert code_of(craft(items)) == "AF4006"

    def test_duplicate_member(self):
        data = MEMBERS["model.onnx"]
        items = [*self.good_items(), regular("model.onnx", data)]
        assert code_of(craft(items)) == "AF4007"

    def test_second_manifest(self):
        assert code_of(craft([*self.good_items(), manifest_member([])])) == "AF4007"

    def test_manifest_not_first(self):
        items = self.good_items()
        assert code_of(craft([items[1], items[0]])) == "AF4008"

    def test_no_members_at_all(self):
        assert code_of(craft([])) in ("AF4001", "AF4008")

    def test_bad_json(self):
        assert code_of(craft([regular(MANIFEST_NAME, b"{not json")])) == "AF4009"

    def test_manifest_not_an_object(self):
        assert code_of(craft([regular(MANIFEST_NAME, b"[1, 2]")])) == "AF4009"

    def test_unsupported_version_names_the_supported_ones(self):
        with pytest.raises(BundleError) as info:
            read_bundle(craft([manifest_member([], format_version="2.0")]))
        assert info.value.code == "AF4010"
        assert "'2.0'" in info.value.message and "1.0" in info.value.hint

    def test_not_an_af_bundle(self):
        assert code_of(craft([manifest_member([], format="zip")])) == "AF4010"

    def test_member_not_in_manifest(self):
        items = [*self.good_items(), regular("extra.bin", b"surprise")]
        assert code_of(craft(items)) == "AF4011"

    def test_manifest_member_missing(self):
        data = MEMBERS["model.onnx"]
        items = [manifest_member([entry("model.onnx", data), entry("model.wasm", b"w")]), regular("model.onnx", data)]
        assert code_of(craft(items)) == "AF4012"

    def test_digest_mismatch(self):
        items = [manifest_member([entry("model.onnx", b"original")]), regular("model.onnx", b"tampered")]
        assert code_of(craft(items)) == "AF4013"

    def test_size_mismatch(self):
        listed = [{**entry("model.onnx", b"abc"), "size": 4}]
        assert code_of(craft([manifest_member(listed), regular("model.onnx", b"abc")])) == "AF4013"

    def test_malformed_member_list(self):
        assert code_of(craft([manifest_member([{"name": 3}])])) == "AF4014"

    def test_ustar_prefix_names_are_read_whole(self):
        name = "sections/" + "d" * 90 + "/" + "n" * 60  # longer than 100 bytes: USTAR splits it
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in (manifest_member([entry(name, b"hello")]), regular(name, b"hello")):
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        bundle = read_bundle(zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue()))
        assert bundle.members == {name: b"hello"}

    def test_header_checksum_mismatch(self):
        raw = bytearray(zstandard.ZstdDecompressor().decompress(craft(self.good_items())))
        raw[1] ^= 0x01  # a byte of manifest.json's name: the header's checksum no longer matches
        assert code_of(zstandard.ZstdCompressor(write_checksum=True).compress(bytes(raw))) == "AF4001"

    def test_unreadable_file(self, tmp_path):
        assert code_of(tmp_path / "missing.afb") == "AF4015"
