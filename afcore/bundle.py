"""The bundle container (.afb): a zstd-compressed POSIX tar with ``manifest.json`` first.

The compiler writes bundles with `write_bundle`; the runtime and `af inspect` read them with
`read_bundle`, which never extracts to disk, never unpickles and never deserializes code. It checks
that the file is exactly one complete zstd frame (a truncated frame decodes silently otherwise),
decodes it in bounded reads under a size cap, parses the tar headers in memory, and accepts only
regular members with plain relative names, each listed exactly once in the manifest with its size
and sha256.

Writing is reproducible: same manifest and members, same bytes (fixed member order, mtime 0,
uid/gid 0, empty owner names, mode 0o644, sorted JSON keys, one zstd frame at a fixed level).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, Union

import zstandard

from .errors import BundleError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_TOTAL_BYTES",
    "MEMBER_ORDER",
    "Member",
    "SUPPORTED_FORMAT_VERSIONS",
    "WINDOW_LOG",
    "ZSTD_LEVEL",
    "Bundle",
    "encode_manifest",
    "iter_bundle",
    "member_size",
    "read_bundle",
    "write_bundle",
]

#: the bundle format this module writes
FORMAT_VERSION = "1.0"
#: the bundle format versions `read_bundle` accepts
SUPPORTED_FORMAT_VERSIONS = ("1.0",)
#: name of the first member
MANIFEST_NAME = "manifest.json"
#: default cap on the decompressed size of a whole bundle (tar stream), in bytes: 4 GiB
MAX_TOTAL_BYTES = 4 << 30
#: the members written first, in this order; any others follow sorted by name
MEMBER_ORDER = (
    "model.onnx",
    "model.wasm",
    "weights.safetensors",
    "training_data.safetensors",
    "agent.yaml",
)
#: zstd level of the writer: fixed, since the level changes the bytes. On float32 weights level 1
#: compresses as well as level 3 (ratio ~0.92 either way) at about twice the speed.
ZSTD_LEVEL = 1
#: log2 of the writer's zstd window: 128 MiB, the most that `zstd -d` and `tar --zstd` decode without
#: ``--long``/``--memory`` flags (with 512 MiB, `tar --zstd -tf` refused every big bundle)
WINDOW_LOG = 27
#: long-distance matching is used for archives of at most this many bytes: weights.safetensors repeats
#: the weights of model.onnx about 2/3 of the archive further on, within the window only up to here
LDM_MAX_ARCHIVE_BYTES = 3 << (WINDOW_LOG - 1)
#: bytes per zstd worker job with long-distance matching (the bytes do not depend on the worker count,
#: only on this)
JOB_SIZE = 16 << 20
#: bytes per zstd worker job without long-distance matching (archives past `LDM_MAX_ARCHIVE_BYTES`):
#: zstd's workers hold a few jobs' input and output buffers, fresh memory for each bundle; 16 MiB jobs
#: cost ~90k page faults per 550 MB bundle, 2 MiB jobs ~35k, for 1.6 KB more output (measured)
FAST_JOB_SIZE = 2 << 20
#: size of the pieces the zstd stream writer hands over
_WRITE_SIZE = 1 << 20
#: long-distance matching samples one position in 2**12 and keeps matches of 256 bytes or more: the
#: repeats it is there for are whole weight tensors, and zstd's defaults (every 128th position, 64
#: bytes) cost about 20% more compression time for the same bundle (measured on a 200 MB network)
LDM_HASH_RATE_LOG, LDM_MIN_MATCH = 12, 256
#: largest zstd window the reader accepts: 512 MiB, the window of bundles written before `WINDOW_LOG`
#: was lowered to 27 (the decoder allocates at most this much)
MAX_WINDOW_SIZE = 1 << 29
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Bundle:
    """A bundle read and verified by `read_bundle`.

    Attributes:
        manifest: the parsed ``manifest.json``.
        members: member name -> bytes (``manifest.json`` excluded); every size and sha256 verified.
        digest: sha256 (hex) of the .afb file's bytes.
    """

    manifest: dict
    members: Mapping[str, bytes]
    digest: str


# --------------------------------------------------------------------------- writing


def _member_key(name: str) -> tuple[int, str]:
    return (MEMBER_ORDER.index(name), "") if name in MEMBER_ORDER else (len(MEMBER_ORDER), name)


def _check_member_name(name: str) -> None:
    if name == MANIFEST_NAME or not _is_safe_name(name) or len(name.encode()) > 100:
        raise BundleError(
            f"cannot write a member named {name!r}",
            code="AF4016",
            hint="member names are relative POSIX paths of at most 100 bytes, other than manifest.json",
        )


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Return the canonical bytes of a manifest: sorted keys, 2-space indent, UTF-8, final newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


#: a member's contents: one buffer, or a sequence of buffers written one after the other (so that a
#: member made of a header and big arrays is never joined into one copy)
Member = Union[bytes, bytearray, memoryview, Sequence[Any]]
#: members at least this big in total are hashed in parallel threads (hashlib releases the GIL)
_THREADED_HASH_BYTES = 8 << 20


def _member_chunks(data: Member) -> list[Any]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [data]
    return [chunk if isinstance(chunk, bytes) else _byte_view(chunk) for chunk in data]


def _byte_view(buffer: Any) -> memoryview:
    view = memoryview(buffer)
    if view.nbytes == 0:
        return memoryview(b"")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def member_size(data: Member) -> int:
    """Return the size in bytes of a member given as bytes or as a sequence of buffers."""
    return _member_size(_member_chunks(data))


def _member_size(chunks: list[Any]) -> int:
    return sum(len(chunk) if isinstance(chunk, bytes) else memoryview(chunk).nbytes for chunk in chunks)


def _sha256(chunks: list[Any]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _digests(chunked: Mapping[str, list[Any]], known: Mapping[str, str]) -> dict[str, str]:
    """sha256 (hex) of every member not in ``known``, the big ones in threads (hashlib releases the GIL)."""
    chunked = {name: chunks for name, chunks in chunked.items() if name not in known}
    sizes = {name: _member_size(chunks) for name, chunks in chunked.items()}
    if sum(sizes.values()) < _THREADED_HASH_BYTES:
        return {name: _sha256(chunks) for name, chunks in chunked.items()}
    from concurrent.futures import ThreadPoolExecutor

    # biggest first, so that the two workers finish at about the same time
    names = sorted(chunked, key=lambda name: -sizes[name])
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1), thread_name_prefix="af-sha256") as pool:
        return dict(zip(names, pool.map(lambda name: _sha256(chunked[name]), names)))


def _tar_member(name: str, chunks: list[Any], size: int) -> list[Any]:
    header = _tar_info(name, size).tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    padding = -size % tarfile.BLOCKSIZE
    return [header, *chunks, bytes(padding)]


def write_bundle(
    manifest: Mapping[str, Any], members: Mapping[str, Member], *, digests: Mapping[str, str] | None = None
) -> bytes:
    """Write a bundle and return its bytes.

    Args:
        manifest: the manifest without ``members``; a copy gets ``members`` (name, size, sha256 of
            each member, sorted by name). It must be JSON-serialisable without NaN.
        members: member name -> bytes, or a sequence of buffers that make up the member.
        digests: sha256 (hex) of members the caller has already hashed, by name; trusted as given
            (the reader checks every digest). The others are hashed here.

    Returns:
        The .afb bytes: one zstd frame (with checksum) of a USTAR archive, ``manifest.json`` first.

    Raises:
        BundleError: AF4016 for a member name that is unsafe or too long.
    """
    return b"".join(iter_bundle(manifest, members, digests=digests))


def iter_bundle(
    manifest: Mapping[str, Any], members: Mapping[str, Member], *, digests: Mapping[str, str] | None = None
) -> Iterator[bytes]:
    """Yield the bytes of `write_bundle` piece by piece, to stream a big bundle into a file.

    Args:
        manifest: as for `write_bundle`.
        members: as for `write_bundle`; buffers are read, never copied, and must not change until
            the iterator is exhausted.
        digests: as for `write_bundle`.

    Raises:
        BundleError: AF4016 for a member name that is unsafe or too long (before anything is yielded).
    """
    for name in members:
        _check_member_name(name)
    chunked = {name: _member_chunks(data) for name, data in members.items()}
    sizes = {name: _member_size(chunks) for name, chunks in chunked.items()}
    known = {name: digest for name, digest in (digests or {}).items() if name in members}
    digests = {**known, **_digests(chunked, known)}
    full = dict(manifest)
    full["members"] = [{"name": name, "size": sizes[name], "sha256": digests[name]} for name in sorted(members)]
    manifest_bytes = encode_manifest(full)
    parts = _tar_member(MANIFEST_NAME, [manifest_bytes], len(manifest_bytes))
    for name in sorted(members, key=_member_key):
        parts += _tar_member(name, chunked[name], sizes[name])
    parts.append(bytes(2 * tarfile.BLOCKSIZE))  # end-of-archive marker
    return _compress_parts(parts)


def _compress_parts(parts: list[Any]) -> Iterator[bytes]:
    # Fed to zstd part by part (no joined copy of the tar: tarfile.addfile would also copy it through
    # 16 KiB buffers), at most one job's worth of input per call, so that output comes out (to be
    # written and hashed by the caller) while zstd's workers go on with the next jobs. The stream
    # writer hands its output over in small reused-size pieces, not as fresh 16 MiB buffers.
    size = _member_size(parts)
    job = _job_size(size)
    sink = _Sink()
    writer = _compressor(threads=-1, size=size).stream_writer(sink, size=size, write_size=_WRITE_SIZE, closefd=False)
    for part in parts:
        view = part if isinstance(part, bytes) and len(part) <= job else memoryview(part)
        for start in range(0, len(view), job):
            writer.write(view[start : start + job])
            yield from sink.take()
    writer.close()  # ends the frame; the sink stays open (closefd=False)
    yield from sink.take()


class _Sink:
    """The file-like object zstd's stream writer writes to; the output is taken out after each call."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(data)
        return len(data)

    def take(self) -> list[bytes]:
        chunks, self.chunks = self.chunks, []
        return chunks


def _uses_ldm(size: int) -> bool:
    return size <= LDM_MAX_ARCHIVE_BYTES


def _job_size(size: int) -> int:
    # with LDM, each job re-reads its window-sized overlap, so small jobs would cost time there
    return JOB_SIZE if _uses_ldm(size) else FAST_JOB_SIZE


def _compressor(*, threads: int, size: int = 0) -> zstandard.ZstdCompressor:
    # zstd's multi-threaded mode gives the same bytes for any worker count >= 1 (not the same as 0
    # workers), so bundles stay identical across machines while using every core here. Long-distance
    # matching finds weights.safetensors' bytes again in model.onnx (a third smaller bundle) as long
    # as they fall within the window; for bigger archives it would only cost time (about 1.5x for a
    # 50M-parameter network), so it is off there. Either way the choice depends on the size alone.
    ldm = _uses_ldm(size)
    params = zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL,
        threads=threads,
        enable_ldm=ldm,
        window_log=WINDOW_LOG if ldm else 0,
        ldm_hash_rate_log=LDM_HASH_RATE_LOG if ldm else 0,
        ldm_min_match=LDM_MIN_MATCH if ldm else 0,
        # the default job size is 4x the window: one job, so one thread, for most bundles
        job_size=_job_size(size),
        write_checksum=True,
        write_content_size=True,
    )
    return zstandard.ZstdCompressor(compression_params=params)


# --------------------------------------------------------------------------- reading


def _is_safe_name(name: str) -> bool:
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts) and posixpath.normpath(name) == name


def _zstd_frame_end(data: bytes | memoryview) -> int:
    """Return the offset just past the first zstd frame, walking block headers without decoding.

    Raises:
        BundleError: AF4001 when ``data`` does not start a zstd frame, AF4002 when the frame is cut short.
    """
    if bytes(data[:4]) != _ZSTD_MAGIC or len(data) < 6:
        raise BundleError(
            "not a bundle: the file is not zstd-compressed",
            code="AF4001",
            hint="an .afb is written by `af compile`; check that the right file was given",
        )
    descriptor = data[4]
    single_segment = (descriptor >> 5) & 1
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    pos += (single_segment, 2, 4, 8)[descriptor >> 6]
    while True:
        if pos + 3 > len(data):
            raise _truncated()
        header = int.from_bytes(data[pos : pos + 3], "little")
        kind, size = (header >> 1) & 3, header >> 3
        if kind == 3:
            raise BundleError("the bundle's zstd data is corrupt (reserved block type)", code="AF4001")
        pos += 3 + (1 if kind == 1 else size)
        if header & 1:
            break
    pos += 4 if (descriptor >> 2) & 1 else 0
    if pos > len(data):
        raise _truncated()
    return pos


def _truncated() -> BundleError:
    return BundleError(
        "the bundle is truncated",
        code="AF4002",
        hint="the file was cut short (interrupted copy or download?); compile or copy it again",
    )


def _too_big(limit: int) -> BundleError:
    return BundleError(
        f"the bundle decompresses to more than {limit} bytes",
        code="AF4003",
        hint="raise max_total_bytes if this bundle is trusted and really this large",
    )


def _decompress(compressed: memoryview, limit: int) -> bytes | bytearray:
    """Decode the frame, refusing to produce more than ``limit`` bytes.

    A frame that declares its decompressed size (af's writer always does) within ``limit`` is
    decoded in one call into a buffer of that size (zstd refuses data that does not match it):
    ~4 ms less than reading it in pieces, for a 5 MB bundle. Any other frame, and any frame the
    one call refuses, is read in bounded pieces as before, which reports the fault.
    """
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
    try:
        declared = zstandard.get_frame_parameters(compressed).content_size
    except zstandard.ZstdError:
        declared = zstandard.CONTENTSIZE_UNKNOWN
    if declared not in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) and declared <= limit:
        try:
            return decompressor.decompress(compressed)
        except zstandard.ZstdError:
            pass
    return _decompress_in_pieces(decompressor, compressed, limit)


def _decompress_in_pieces(decompressor: Any, compressed: memoryview, limit: int) -> bytearray:
    """Decode the frame in bounded reads, refusing to produce more than ``limit`` bytes."""
    out = bytearray()
    try:
        with decompressor.stream_reader(compressed, read_size=_READ_SIZE) as reader:
            while chunk := reader.read(min(_READ_SIZE * 8, limit + 1 - len(out))):
                out += chunk
                if len(out) > limit:
                    raise _too_big(limit)
    except zstandard.ZstdError as exc:
        raise BundleError(f"the bundle's zstd data is corrupt: {exc}", code="AF4001") from None
    return out


class _BufferFile(io.RawIOBase):
    """A seekable read-only file over a buffer, so tarfile parses headers without copying the data."""

    def __init__(self, buffer: bytes | bytearray) -> None:
        self._view = memoryview(buffer)
        self._pos = 0
        self.size = len(buffer)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self.size)[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        data = bytes(self._view[self._pos : end]) if end > self._pos else b""
        self._pos = max(self._pos, end)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_source(source: bytes | str | os.PathLike) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {os.fspath(source)!r}: {exc.strerror}", code="AF4015") from None


def _refuse_member(info: tarfile.TarInfo) -> None:
    name = info.name
    if not _is_safe_name(name):
        raise BundleError(
            f"member {name!r} has an unsafe path",
            code="AF4004",
            hint="bundle members have relative names without `..`; this bundle was not written by af",
        )
    if info.issym() or info.islnk():
        raise BundleError(f"member {name!r} is a link (to {info.linkname!r})", code="AF4005",
                          hint="bundles hold regular files only; this bundle was not written by af")
    if not info.isreg() or info.issparse():
        raise BundleError(f"member {name!r} is not a regular file (tar type {info.type!r})", code="AF4006",
                          hint="bundles hold regular files only; this bundle was not written by af")


def _iter_members(buffer: bytes | bytearray) -> Iterator[tuple[str, bytes]]:
    view = memoryview(buffer)
    if not buffer:
        raise BundleError("the bundle holds no tar archive", code="AF4001")
    try:
        with tarfile.open(fileobj=_BufferFile(buffer), mode="r:") as tar:
            for info in tar:
                _refuse_member(info)
                if info.offset_data + info.size > len(buffer):
                    raise _truncated()
                yield info.name, bytes(view[info.offset_data : info.offset_data + info.size])
    except (tarfile.ReadError, EOFError) as exc:
        if "unexpected end" in str(exc) or "truncated" in str(exc):
            raise _truncated() from None
        raise BundleError(f"the bundle holds no valid tar archive: {exc}", code="AF4001") from None
    except tarfile.TarError as exc:
        raise BundleError(f"the bundle's tar archive is corrupt: {exc}", code="AF4001") from None


def _parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}", code="AF4009") from None
    if not isinstance(manifest, dict):
        raise BundleError("manifest.json is not a JSON object", code="AF4009")
    if manifest.get("format") != "afb":
        raise BundleError("manifest.json does not describe an af bundle (`format` is not \"afb\")", code="AF4010")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(
            f"unsupported bundle format version {version!r}",
            code="AF4010",
            hint=f"this af reads format versions {', '.join(SUPPORTED_FORMAT_VERSIONS)}; "
            "recompile the .af with this af or use a matching af",
        )
    return manifest


def _listed_members(manifest: dict) -> dict[str, tuple[int, str]]:
    entries = manifest.get("members")
    listed: dict[str, tuple[int, str]] = {}
    if not isinstance(entries, list):
        raise BundleError("manifest.json has no `members` list", code="AF4014")
    for entry in entries:
        ok = isinstance(entry, dict) and isinstance(entry.get("name"), str)
        ok = ok and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
        if not ok or entry["name"] in listed:
            raise BundleError(f"manifest.json has a malformed or repeated member entry {entry!r}", code="AF4014")
        listed[entry["name"]] = (entry["size"], entry["sha256"].lower())
    return listed


def _verify_member(name: str, data: bytes, listed: dict[str, tuple[int, str]]) -> None:
    if name not in listed:
        raise BundleError(f"member {name!r} is not listed in manifest.json", code="AF4011",
                          hint="the bundle was altered after it was written; compile it again")
    size, digest = listed[name]
    if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
        raise BundleError(f"member {name!r} does not match its size or sha256 in manifest.json", code="AF4013",
                          hint="the bundle is corrupt or was tampered with; compile it again")


def read_bundle(source: bytes | str | os.PathLike, *, max_total_bytes: int = MAX_TOTAL_BYTES) -> Bundle:
    """Read and verify a bundle in memory.

    Args:
        source: the .afb bytes or a path to them.
        max_total_bytes: cap on the decompressed size of the archive.

    Returns:
        The verified `Bundle`.

    Raises:
        BundleError: with one code per fault (see docs/diagnostics.md, AF4001-AF4016): not zstd or
            corrupt, truncated, too big, unsafe path, link, non-regular member, duplicate member,
            manifest missing or not first, bad JSON, unsupported version, unlisted or missing member,
            digest mismatch, unreadable file.
    """
    data = _read_source(source)
    view = memoryview(data)
    if _zstd_frame_end(view) != len(data):
        raise BundleError("the bundle has trailing data after its zstd frame", code="AF4001",
                          hint="an .afb is one zstd frame; the file was altered or concatenated")
    buffer = _decompress(view, max_total_bytes)
    manifest: dict | None = None
    listed: dict[str, tuple[int, str]] = {}
    members: dict[str, bytes] = {}
    for name, content in _iter_members(buffer):
        if manifest is None:
            if name != MANIFEST_NAME:
                raise BundleError(f"the first member is {name!r}, not manifest.json", code="AF4008",
                                  hint="bundles start with manifest.json; this bundle was not written by af")
            manifest = _parse_manifest(content)
            listed = _listed_members(manifest)
            continue
        if name in members or name == MANIFEST_NAME:
            raise BundleError(f"member {name!r} appears more than once", code="AF4007",
                              hint="a bundle holds each member once; this bundle was not written by af")
        _verify_member(name, content, listed)
        members[name] = content
    if manifest is None:
        raise BundleError("the bundle has no manifest.json", code="AF4008")
    missing = sorted(set(listed) - set(members))
    if missing:
        raise BundleError(f"member(s) {', '.join(missing)} listed in manifest.json are missing", code="AF4012",
                          hint="the bundle is incomplete; compile it again")
    return Bundle(manifest=manifest, members=members, digest=hashlib.sha256(data).hexdigest())
