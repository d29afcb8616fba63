"""The bundle container (.afb): a zstd-compressed POSIX tar with ``manifest.json`` first.

The compiler writes bundles with `write_bundle`; the runtime and `af inspect` read them with
`read_bundle`, which never extracts to disk, never unpickles and never deserializes code. It checks
that the file is exactly one complete zstd frame (a truncated frame decodes silently otherwise),
reads the manifest first (and the bundle's signature, ``signature.json``, when it follows: a
caller's ``verify`` sees both before the manifest is parsed), and accepts only regular members with
plain relative names, each listed exactly once in the manifest with its size and sha256, and zeros
in every padding; no member is inflated before its header has been checked against the manifest,
nor when the listed members exceed the size cap. The manifest
itself is typed and checked in `afcore.manifest` (`Manifest`).

Writing is reproducible: same manifest and members, same bytes (fixed member order, mtime 0,
uid/gid 0, empty owner names, mode 0o644, sorted JSON keys, one zstd frame at a fixed level).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence, Union

import zstandard

from .errors import BundleError
from .manifest import FORMAT_VERSION, SUPPORTED_FORMAT_VERSIONS, Manifest, MemberEntry, check_format, parse_members

__all__ = [
    "FORMAT_VERSION",
    "IN_MEMORY_BYTES",
    "LARGE_MEMBER_BYTES",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURE_BYTES",
    "MAX_TOTAL_BYTES",
    "MEMBER_ORDER",
    "Member",
    "MemberFile",
    "SIGNATURE_NAME",
    "SUPPORTED_FORMAT_VERSIONS",
    "WINDOW_LOG",
    "ZSTD_LEVEL",
    "Bundle",
    "Manifest",
    "assemble_bundle",
    "encode_manifest",
    "iter_bundle",
    "member_size",
    "read_bundle",
    "write_bundle",
]

#: name of the first member
MANIFEST_NAME = "manifest.json"
#: name of the signature member (`afcore.signing`): second when present, never listed in the manifest,
#: whose bytes it signs
SIGNATURE_NAME = "signature.json"
#: the largest signature member accepted (one Ed25519 signature takes about 400 bytes)
MAX_SIGNATURE_BYTES = 64 << 10
#: the tar block size (tarfile.BLOCKSIZE: tarfile itself is imported only to write)
BLOCK = 512
#: default cap on the decompressed size of a whole bundle (tar stream), in bytes: 1 GiB. A valid bundle
#: costs its own size in memory; this caps what a small file may make af allocate. Bigger bundles
#: (networks of more than ~80 M parameters, whose weights the bundle holds two or three times) need
#: ``max_total_bytes`` raised
MAX_TOTAL_BYTES = 1 << 30
#: archives up to this size are decoded in one call and read in one pass; members adding up to more
#: are verified in a first pass that keeps nothing, so a hostile bundle costs at most about this much
IN_MEMORY_BYTES = 64 << 20
#: members bigger than this are worth leaving on disk for a runtime that can read them from a file
#: (`read_bundle`'s ``spill_over`` as `af run` passes it: onnxruntime then reads the model itself)
LARGE_MEMBER_BYTES = 16 << 20
#: the largest manifest.json accepted (100,000 members take about 13 MB)
MAX_MANIFEST_BYTES = 32 << 20
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


class MemberFile:
    """A member that `read_bundle` wrote to a private temporary file (``spill_over``) instead of keeping it.

    Its size and sha256 were verified as it was written. The file and its directory (made by
    `tempfile.mkdtemp`, readable by this user only) go when the object is collected, at exit, or
    at `remove`.

    Attributes:
        path: the file.
        size: its size in bytes.
    """

    def __init__(self, path: str, size: int, directory: str) -> None:
        import shutil
        import weakref

        self.path, self.size = path, size
        self._finalizer = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"<MemberFile {self.path} ({self.size:,} bytes)>"

    def read_bytes(self) -> bytes:
        """Return the member's bytes (read into memory).

        Raises:
            BundleError: AF4015 when the file is gone (after `remove`).
        """
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise BundleError(f"cannot read the extracted member {self.path!r}: {exc.strerror}", code="AF4015",
                              hint="the bundle's temporary file was removed; read the bundle again") from None

    def remove(self) -> None:
        """Remove the file now (it may be removed while open or mapped)."""
        self._finalizer()


@dataclass(frozen=True)
class Bundle:
    """A bundle read and verified by `read_bundle`.

    Attributes:
        manifest: the parsed ``manifest.json``.
        members: member name -> bytes, or a `MemberFile` for a member spilled to disk (see
            `read_bundle`'s ``spill_over``), ``manifest.json`` and ``signature.json`` excluded; every
            size and sha256 verified.
        digest: sha256 (hex) of the .afb file's bytes.
        manifest_bytes: ``manifest.json`` exactly as stored (what a signature signs).
        signature: the bytes of ``signature.json``, None for an unsigned bundle (not verified here).
        verified: what ``read_bundle``'s ``verify`` returned (`afcore.signing.Signature`), else None.
        left_out: members the manifest lists that were verified but not kept (``keep``).
    """

    manifest: dict
    members: Mapping[str, Any]
    digest: str
    manifest_bytes: bytes = b""
    signature: bytes | None = None
    verified: Any = None
    left_out: frozenset[str] = frozenset()


# --------------------------------------------------------------------------- writing


def _member_key(name: str) -> tuple[int, str]:
    return (MEMBER_ORDER.index(name), "") if name in MEMBER_ORDER else (len(MEMBER_ORDER), name)


def _check_member_name(name: str) -> None:
    if name in (MANIFEST_NAME, SIGNATURE_NAME) or not _is_safe_name(name) or len(name.encode()) > 100:
        raise BundleError(
            f"cannot write a member named {name!r}",
            code="AF4016",
            hint="member names are relative POSIX paths of at most 100 bytes, other than manifest.json "
            "and signature.json",
        )


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Return the canonical bytes of a manifest: sorted keys, 2-space indent, UTF-8, final newline."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _tar_info(name: str, size: int) -> Any:
    import tarfile  # writing only: reading parses the headers itself (`_read_header`)

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
    import tarfile

    header = _tar_info(name, size).tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    padding = -size % BLOCK
    return [header, *chunks, bytes(padding)]


def write_bundle(
    manifest: Manifest | Mapping[str, Any], members: Mapping[str, Member], *, digests: Mapping[str, str] | None = None
) -> bytes:
    """Write a bundle and return its bytes.

    Args:
        manifest: the manifest without ``members`` (a `Manifest` or its JSON data); a copy gets
            ``members`` (name, size, sha256 of each member, sorted by name). It must be
            JSON-serialisable without NaN.
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
    manifest: Manifest | Mapping[str, Any], members: Mapping[str, Member], *, digests: Mapping[str, str] | None = None
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
    if isinstance(manifest, Manifest):
        manifest = manifest.to_json()
    for name in members:
        _check_member_name(name)
    chunked = {name: _member_chunks(data) for name, data in members.items()}
    sizes = {name: _member_size(chunks) for name, chunks in chunked.items()}
    known = {name: digest for name, digest in (digests or {}).items() if name in members}
    digests = {**known, **_digests(chunked, known)}
    full = dict(manifest)
    full["members"] = [{"name": name, "size": sizes[name], "sha256": digests[name]} for name in sorted(members)]
    return _compress_parts(_archive_parts(encode_manifest(full), chunked, sizes, None))


def _archive_parts(manifest_bytes: bytes, chunked: Mapping[str, list[Any]], sizes: Mapping[str, int],
                   signature: bytes | None) -> list[Any]:
    parts = _tar_member(MANIFEST_NAME, [manifest_bytes], len(manifest_bytes))
    if signature is not None:
        parts += _tar_member(SIGNATURE_NAME, [signature], len(signature))
    for name in sorted(chunked, key=_member_key):
        parts += _tar_member(name, chunked[name], sizes[name])
    parts.append(bytes(2 * BLOCK))  # end-of-archive marker
    return parts


def assemble_bundle(manifest_bytes: bytes, members: Mapping[str, Member], *, signature: bytes | None = None) -> bytes:
    """Write a bundle around manifest bytes kept as they are (`af sign` adds a signature this way).

    Args:
        manifest_bytes: ``manifest.json`` exactly as it is to be stored (a signature signs these bytes).
        members: member name -> bytes (or buffers); they must be those the manifest lists.
        signature: the bytes of ``signature.json``, written second; None for none.

    Returns:
        The .afb bytes, laid out as `write_bundle` lays them out.

    Raises:
        BundleError: AF4016 for a member name that is unsafe or too long.
    """
    for name in members:
        _check_member_name(name)
    chunked = {name: _member_chunks(data) for name, data in members.items()}
    sizes = {name: _member_size(chunks) for name, chunks in chunked.items()}
    return b"".join(_compress_parts(_archive_parts(manifest_bytes, chunked, sizes, signature)))


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
#
# Memory is bounded by what the manifest lists, never by what the archive holds: the manifest is
# read first (it must be the first member and at most `MAX_MANIFEST_BYTES`); every later tar header
# is checked against it (listed once, same size, safe name, regular file) before its data is
# inflated; and the listed sizes must fit in ``max_total_bytes`` before any member is inflated.
# An archive whose frame declares at most `IN_MEMORY_BYTES` is decoded in one call (fast, and
# bounded by that size); a bigger one is streamed, and when its members list more than
# `IN_MEMORY_BYTES` they are first verified (sizes and sha256) in a pass that keeps nothing, then
# inflated again to be kept: a hostile bundle is refused within about `IN_MEMORY_BYTES` of memory,
# whatever it claims, and a valid one costs its own size.


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


def _too_big(limit: int, what: str = "the bundle decompresses to") -> BundleError:
    return BundleError(
        f"{what} more than {limit:,} bytes (the cap)",
        code="AF4003",
        hint="a zstd bomb, or a trusted bundle this large: raise the cap (max_total_bytes=, `--max-bundle-mb`)",
    )


def _nonzero(where: str) -> BundleError:
    return BundleError(f"the bundle's tar archive is corrupt: non-zero bytes {where}", code="AF4001",
                       hint="af writes zeros there; the bundle was altered after it was written")


def _corrupt(exc: Exception) -> BundleError:
    return BundleError(f"the bundle's zstd data is corrupt: {exc}", code="AF4001")


class _Archive:
    """The decompressed tar stream of a bundle, read front to back, never more than ``limit`` bytes."""

    def __init__(self, compressed: memoryview, limit: int) -> None:
        self.limit, self.pos = limit, 0
        #: a header read ahead (after the manifest, to look for the signature) and given back
        self.unread: list[_Header | None] = []
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        try:
            declared = zstandard.get_frame_parameters(compressed).content_size
        except zstandard.ZstdError as exc:
            raise _corrupt(exc) from None
        known = declared not in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR)
        if known and declared > limit:
            raise _too_big(limit)
        self._buffer: memoryview | None = None
        if known and declared <= IN_MEMORY_BYTES:
            # one call into a buffer of the declared size (zstd refuses data that does not match it)
            try:
                self._buffer = memoryview(decompressor.decompress(compressed))
            except zstandard.ZstdError as exc:
                raise _corrupt(exc) from None
        else:
            self._reader = decompressor.stream_reader(compressed, read_size=_READ_SIZE)

    @property
    def in_memory(self) -> bool:
        """True when the whole archive was decoded at once (at most `IN_MEMORY_BYTES`)."""
        return self._buffer is not None

    def read(self, size: int, *, eof_ok: bool = False) -> bytes | memoryview:
        """Return the next ``size`` bytes (a view when decoded at once); b"" at the end when ``eof_ok``."""
        if self.pos + size > self.limit:
            raise _too_big(self.limit)
        if self._buffer is not None:
            data: bytes | memoryview = self._buffer[self.pos : self.pos + size]
        else:
            data = self._read_stream(size)
        if len(data) != size:
            if eof_ok and not data:
                return b""
            raise _truncated()
        self.pos += size
        return data

    def _read_stream(self, size: int) -> bytes:
        try:
            data = self._reader.read(size)
            if len(data) < size and data:
                pieces = [data]
                while size - sum(map(len, pieces)) and (more := self._reader.read(size - sum(map(len, pieces)))):
                    pieces.append(more)
                data = b"".join(pieces)
        except zstandard.ZstdError as exc:
            raise _corrupt(exc) from None
        return data

    def digest(self, size: int) -> str:
        """Return the sha256 (hex) of the next ``size`` bytes, read in bounded pieces and not kept."""
        digest = hashlib.sha256()
        while size:
            piece = self.read(min(size, _READ_SIZE))
            digest.update(piece)
            size -= len(piece)
        return digest.hexdigest()

    def drain(self) -> None:
        """Read to the end of the frame (so that zstd checks its checksum), keeping nothing.

        What follows the end-of-archive marker must be zeros: no byte of a bundle goes unchecked
        (a signature covers the manifest, the manifest every member, and the rest is zeros).
        """
        if self._buffer is not None:
            if self._buffer[self.pos :].tobytes().strip(b"\0"):
                raise _nonzero("after the end-of-archive marker")
            return
        while piece := self._read_stream(_READ_SIZE):
            self.pos += len(piece)
            if self.pos > self.limit:
                raise _too_big(self.limit)
            if piece.strip(b"\0"):
                raise _nonzero("after the end-of-archive marker")

    def skip_padding(self, size: int) -> None:
        """Read the zeros that pad a member of ``size`` bytes to a whole block."""
        if bytes(self.read(-size % BLOCK)).strip(b"\0"):
            raise _nonzero("in a member's padding")

    def close(self) -> None:
        """Release the decoder."""
        if self._buffer is None:
            self._reader.close()


@dataclass(frozen=True)
class _Header:
    """The fields of a tar header that the reader looks at."""

    name: str
    size: int
    type: bytes
    linkname: str


#: tar type flags of a regular file: "0", the old "\0", and "7" (contiguous)
_REGULAR_TYPES = (b"0", b"\0", b"7")
_LINK_TYPES = (b"1", b"2")


def _header(archive: _Archive) -> _Header | None:
    """Return the next member's header, None at the end of the archive.

    Parsed here rather than by `tarfile.TarInfo.frombuf`, which took ~15 us a header (1.5 s of a
    100,000-member bundle); only USTAR (what af writes) and the fields below are read.
    """
    if archive.unread:
        return archive.unread.pop()
    block = bytes(archive.read(BLOCK, eof_ok=True))
    if not block or block == _ZERO_BLOCK:
        return None  # end-of-archive marker, or the end of the data at a header boundary
    try:
        checksum = int(block[148:156].rstrip(b" \0").decode("ascii") or "x", 8)
        size_field = block[124:136]
        size = int.from_bytes(size_field[1:], "big") if size_field[0] & 0x80 else int(
            size_field.rstrip(b" \0").decode("ascii") or "0", 8)
    except (ValueError, UnicodeDecodeError):
        raise BundleError("the bundle's tar archive is corrupt: a member header is malformed", code="AF4001") from None
    if checksum != sum(block) - sum(block[148:156]) + 8 * 32:
        raise BundleError("the bundle's tar archive is corrupt: a member header fails its checksum", code="AF4001")
    name = _text(block[0:100])
    if block[257:263] == b"ustar\0" and block[345] != 0:  # POSIX ustar: the name may have a prefix
        name = f"{_text(block[345:500])}/{name}"
    kind = block[156:157]
    if kind == b"5" or (kind == b"\0" and name.endswith("/")):  # a directory, named "dir/" (as tarfile reads it)
        kind, name = b"5", name.rstrip("/")
    return _Header(name, size, kind, _text(block[157:257]))


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_ZERO_BLOCK = bytes(BLOCK)


def _refuse_member(info: _Header) -> None:
    name = info.name
    if not _is_safe_name(name):
        raise BundleError(
            f"member {name!r} has an unsafe path",
            code="AF4004",
            hint="bundle members have relative names without `..`; this bundle was not written by af",
        )
    if info.type in _LINK_TYPES:
        raise BundleError(f"member {name!r} is a link (to {info.linkname!r})", code="AF4005",
                          hint="bundles hold regular files only; this bundle was not written by af")
    if info.type not in _REGULAR_TYPES:
        raise BundleError(f"member {name!r} is not a regular file (tar type {info.type.decode('latin-1')!r})",
                          code="AF4006", hint="bundles hold regular files only; this bundle was not written by af")


def _read_head(archive: _Archive) -> tuple[bytes, bytes | None]:
    """Return the bytes of ``manifest.json`` and of ``signature.json`` (None when the bundle has none).

    Nothing is parsed but tar headers: this is all a signature check needs, before the manifest is read.
    """
    info = _header(archive)
    if info is None and archive.pos == 0:
        raise BundleError("the bundle holds no tar archive", code="AF4001")
    if info is None:
        raise BundleError("the bundle has no manifest.json", code="AF4008")
    _refuse_member(info)
    if info.name != MANIFEST_NAME:
        raise BundleError(f"the first member is {info.name!r}, not manifest.json", code="AF4008",
                          hint="bundles start with manifest.json; this bundle was not written by af")
    if info.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"manifest.json is {info.size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a manifest may be",
                          code="AF4023", hint="this bundle was not written by af")
    data = bytes(archive.read(info.size))
    archive.skip_padding(info.size)
    following = _header(archive)
    if following is None or following.name != SIGNATURE_NAME:
        archive.unread.append(following)  # the first member: `_read_members` takes it from here
        return data, None
    _refuse_member(following)
    if following.size > MAX_SIGNATURE_BYTES:
        raise BundleError(f"signature.json is {following.size:,} bytes, more than the {MAX_SIGNATURE_BYTES:,} a "
                          "signature may be", code="AF4054", hint="this signature was not written by `af sign`")
    signature = bytes(archive.read(following.size))
    archive.skip_padding(following.size)
    return data, signature


def _parse_manifest(archive: _Archive, data: bytes) -> tuple[dict, dict[str, MemberEntry]]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}", code="AF4009") from None
    check_format(manifest)
    listed = {entry.name: entry for entry in parse_members(manifest)}
    read_ahead = BLOCK if archive.unread and archive.unread[0] is not None else 0  # counted in pos already
    archived = archive.pos - read_ahead + sum(BLOCK + _padded(e.size) for e in listed.values()) + 2 * BLOCK
    if archived > archive.limit:
        raise _too_big(archive.limit, "the members listed in manifest.json add up to")
    return manifest, listed


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


def _next_member(archive: _Archive, listed: Mapping[str, MemberEntry], seen: set[str]) -> MemberEntry | None:
    """Read the next header and check it against the manifest, before any of its data is inflated."""
    info = _header(archive)
    if info is None:
        missing = sorted(set(listed) - seen)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise BundleError(f"member(s) {shown} listed in manifest.json are missing", code="AF4012",
                              hint="the bundle is incomplete; compile it again")
        return None
    _refuse_member(info)
    name = info.name
    if name == SIGNATURE_NAME:
        raise BundleError("member 'signature.json' is out of place: a signature directly follows manifest.json",
                          code="AF4011", hint="the bundle was altered after it was written; sign it again with `af sign`")
    if name in seen or name == MANIFEST_NAME:
        raise BundleError(f"member {name!r} appears more than once", code="AF4007",
                          hint="a bundle holds each member once; this bundle was not written by af")
    entry = listed.get(name)
    if entry is None:
        raise BundleError(f"member {name!r} is not listed in manifest.json", code="AF4011",
                          hint="the bundle was altered after it was written; compile it again")
    if info.size != entry.size:
        raise _mismatch(name)
    seen.add(name)
    return entry


def _mismatch(name: str) -> BundleError:
    return BundleError(f"member {name!r} does not match its size or sha256 in manifest.json", code="AF4013",
                       hint="the bundle is corrupt or was tampered with; compile it again")


class _Keep:
    """Which members `_read_members` keeps, and where: in memory, or in a file (``spill_over``)."""

    def __init__(self, names: Collection[str] | None, spill_over: int | None) -> None:
        self.names, self.spill_over = names, spill_over

    def wants(self, name: str) -> bool:
        return self.names is None or name in self.names

    def spills(self, size: int) -> bool:
        return self.spill_over is not None and size > self.spill_over


def _read_members(archive: _Archive, listed: Mapping[str, MemberEntry], *, keep: _Keep | None,
                  verify: bool) -> dict[str, Any]:
    """Read every member after the manifest: verify its sha256 and/or keep it (in memory or in a file)."""
    members: dict[str, Any] = {}
    seen: set[str] = set()
    while (entry := _next_member(archive, listed, seen)) is not None:
        if keep is not None and keep.wants(entry.name) and keep.spills(entry.size):
            members[entry.name] = _spill(archive, entry, verify=verify)
        elif keep is not None and keep.wants(entry.name):
            data = bytes(archive.read(entry.size))
            if verify and hashlib.sha256(data).hexdigest() != entry.sha256:
                raise _mismatch(entry.name)
            members[entry.name] = data
        elif verify and archive.digest(entry.size) != entry.sha256:
            raise _mismatch(entry.name)
        elif not verify:
            archive.digest(entry.size)  # checked in the first pass: only skipped here
        archive.skip_padding(entry.size)
    archive.drain()
    return members


def _spill(archive: _Archive, entry: MemberEntry, *, verify: bool) -> MemberFile:
    """Write a member to a file of its own in pieces, hashing them; a member that fails is removed."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="af-member-")  # mode 0700: this user's only
    member = MemberFile(os.path.join(directory, posixpath.basename(entry.name)), entry.size, directory)
    digest = hashlib.sha256()
    with open(member.path, "xb") as handle:
        size = entry.size
        while size:
            piece = archive.read(min(size, _READ_SIZE))
            digest.update(piece)
            handle.write(piece)
            size -= len(piece)
    if verify and digest.hexdigest() != entry.sha256:
        member.remove()
        raise _mismatch(entry.name)
    return member


def _read_source(source: bytes | str | os.PathLike, limit: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(source, "rb") as handle:
            # zstd never makes data much bigger: a file far past the cap cannot hold a bundle within it
            if os.fstat(handle.fileno()).st_size > limit + (limit >> 7) + (1 << 16):
                raise _too_big(limit, f"{os.fspath(source)!r} is bigger than any bundle that decompresses to")
            return handle.read()
    except OSError as exc:
        raise BundleError(f"cannot read bundle {os.fspath(source)!r}: {exc.strerror}", code="AF4015",
                          hint="check the path and its permissions") from None


def read_bundle(source: bytes | str | os.PathLike, *, max_total_bytes: int = MAX_TOTAL_BYTES,
                verify: Callable[[bytes, bytes | None], Any] | None = None,
                keep: Collection[str] | Callable[[dict], Collection[str]] | None = None,
                spill_over: int | None = None) -> Bundle:
    """Read and verify a bundle in memory.

    Args:
        source: the .afb bytes or a path to them.
        max_total_bytes: cap on the decompressed size of the archive (`MAX_TOTAL_BYTES` by default);
            members are refused before they are inflated when the manifest lists more than this.
        verify: called with the bytes of ``manifest.json`` and of ``signature.json`` (None when the
            bundle is unsigned) before anything else is parsed; what it raises propagates, what it
            returns is kept in `Bundle.verified` (`afcore.signing.read_signed_bundle` passes one).
        keep: the names of the members to keep, or a function of the parsed manifest that returns
            them; the others are verified all the same, then left out (`Bundle.left_out`). None
            keeps every member. A runtime that needs one model keeps its memory to that model.
        spill_over: members kept that are bigger than this many bytes are written to a private
            temporary file (a `MemberFile`, verified as it is written) instead of memory; None
            keeps every member in memory.

    Returns:
        The verified `Bundle`.

    Raises:
        BundleError: with one code per fault (see docs/diagnostics.md, AF4001-AF4016, AF4023): not
            zstd or corrupt, truncated, too big, unsafe path, link, non-regular member, duplicate
            member, manifest missing or not first or too big, bad JSON, unsupported version,
            unlisted or missing member, size or digest mismatch, unreadable file; AF4054 for a
            signature member over `MAX_SIGNATURE_BYTES`.
    """
    data = _read_source(source, max_total_bytes)
    view = memoryview(data)
    if _zstd_frame_end(view) != len(data):
        raise BundleError("the bundle has trailing data after its zstd frame", code="AF4001",
                          hint="an .afb is one zstd frame; the file was altered or concatenated")
    archive = _Archive(view, max_total_bytes)
    try:
        manifest_bytes, signature = _read_head(archive)
        verified = verify(manifest_bytes, signature) if verify is not None else None
        manifest, listed = _parse_manifest(archive, manifest_bytes)
        wanted = _Keep(None if keep is None else set(keep(manifest) if callable(keep) else keep), spill_over)
        in_memory = sum(e.size for e in listed.values() if wanted.wants(e.name) and not wanted.spills(e.size))
        two_passes = not archive.in_memory and in_memory > IN_MEMORY_BYTES
        members = _read_members(archive, listed, keep=None if two_passes else wanted, verify=True)
    finally:
        archive.close()
    if two_passes:  # verified without keeping anything; now inflate again and keep
        archive = _Archive(view, max_total_bytes)
        try:
            _read_head(archive)
            members = _read_members(archive, listed, keep=wanted, verify=False)
        finally:
            archive.close()
    return Bundle(manifest=manifest, members=members, digest=hashlib.sha256(data).hexdigest(),
                  manifest_bytes=manifest_bytes, signature=signature, verified=verified,
                  left_out=frozenset(listed) - frozenset(members))
