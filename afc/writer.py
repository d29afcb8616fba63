"""Write `.af` files: header text plus sections, each a zstd frame as wrapped base64 or raw bytes.

The output is a pure function of the arguments (docs/format.md, "Binary sections"): zstd level
`ZSTD_LEVEL` in one thread with the content size and checksum in the frame header and no dictionary
id, base64 wrapped at `BASE64_LINE_LENGTH` columns with every line (the last too) ended by the file's
newline, and one newline after a raw frame. So reading a file we wrote and writing it again with the
same header text, sections, encodings and newline gives the same bytes.
"""

from __future__ import annotations

import binascii
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import zstandard

from afcore import fsutil
from afcore.errors import UsageError

from .reader import MARKER_PREFIX, SECTION_NAME_RE

__all__ = [
    "BASE64_LINE_LENGTH",
    "ZSTD_LEVEL",
    "compress_payload",
    "encode_base64_lines",
    "write_container",
    "write_af_file",
]

#: zstd compression level of every section (fixed: the output must be reproducible)
ZSTD_LEVEL = 3
#: characters per base64 line (RFC 2045's width, which `base64.encodebytes` also uses)
BASE64_LINE_LENGTH = 76

_BOM = b"\xef\xbb\xbf"


def compress_payload(payload: bytes) -> bytes:
    """Compress one section payload into a single zstd frame with content size and checksum.

    Args:
        payload: the decompressed section bytes (e.g. a safetensors file).

    Returns:
        One zstd frame, the same bytes for the same payload and zstd library version.
    """
    compressor = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_checksum=True, write_content_size=True, write_dict_id=False, threads=0
    )
    return compressor.compress(payload)


def encode_base64_lines(frame: bytes, newline: str = "\n") -> bytes:
    """Return ``frame`` as standard padded base64, `BASE64_LINE_LENGTH` characters per line.

    Every line, the last one too, ends with ``newline``; an empty frame gives no lines.
    """
    text = binascii.b2a_base64(frame, newline=False)
    nl = newline.encode("ascii")
    full, rest = divmod(len(text), BASE64_LINE_LENGTH)
    # Interleave newlines with numpy: one pass instead of a Python loop over millions of lines.
    grid = np.empty((full, BASE64_LINE_LENGTH + len(nl)), dtype=np.uint8)
    grid[:, :BASE64_LINE_LENGTH] = np.frombuffer(text, np.uint8, full * BASE64_LINE_LENGTH).reshape(full, BASE64_LINE_LENGTH)
    grid[:, BASE64_LINE_LENGTH:] = np.frombuffer(nl, np.uint8)
    tail = text[full * BASE64_LINE_LENGTH :] + nl if rest else b""
    return grid.tobytes() + tail


def write_container(
    header_text: str,
    sections: Sequence[tuple[str, bytes]],
    *,
    raw: bool | Collection[str] = False,
    newline: str = "\n",
    bom: bool = False,
) -> bytes:
    """Assemble the bytes of an `.af` file.

    Args:
        header_text: the YAML header, written as given (its line endings are kept); a newline is
            added when sections follow and it does not end with one.
        sections: ``(name, payload)`` pairs in file order; payloads are the decompressed bytes.
        raw: True to store every section raw, or the names of the sections to store raw; the others
            are base64.
        newline: ``"\\n"`` or ``"\\r\\n"``, used after marker lines and base64 lines.
        bom: start the file with a UTF-8 BOM.

    Returns:
        The file's bytes.

    Raises:
        UsageError: for a bad or duplicate section name, or a newline other than LF or CRLF.
    """
    _check_arguments(sections, newline)
    nl = newline.encode("ascii")
    head = header_text.encode("utf-8")
    if sections and head and not head.endswith(b"\n"):
        head += nl
    parts = [_BOM if bom else b"", head]
    for name, payload in sections:
        frame = compress_payload(payload)
        parts.append(MARKER_PREFIX + name.encode("ascii") + b"---" + nl)
        is_raw = raw if isinstance(raw, bool) else name in raw
        parts += [frame, nl] if is_raw else [encode_base64_lines(frame, newline)]
    return b"".join(parts)


def _check_arguments(sections: Sequence[tuple[str, bytes]], newline: str) -> None:
    if newline not in ("\n", "\r\n"):
        raise UsageError(f"newline must be LF or CRLF, not {newline!r}", code="AF0910")
    seen: set[str] = set()
    for name, _ in sections:
        if SECTION_NAME_RE.fullmatch(name) is None:
            raise UsageError(f"invalid section name {name!r}", code="AF0910", hint="use [A-Za-z_][A-Za-z0-9_.-]{0,63}")
        if name in seen:
            raise UsageError(f"section {name!r} is given twice", code="AF0910")
        seen.add(name)


def write_af_file(path: Path, data: bytes, *, code: str) -> None:
    """Replace ``path`` with ``data`` atomically (`afcore.fsutil.write_file_atomic`: temporary file in
    the same directory, fsync, rename, fsync of the directory; an existing file's mode is kept).

    Args:
        path: the destination.
        data: the new contents.
        code: the error code of the command that writes (`af pack` AF0914, `af train` AF6031).

    Raises:
        UsageError: ``code`` when the directory is not writable or the disk is full (the old file
            stands and the temporary file is removed).
    """
    try:
        fsutil.write_file_atomic(path, data)
    except OSError as exc:
        raise UsageError(f"cannot write `{path}`: {exc.strerror or exc}", code=code,
                         hint="check that the directory exists and is writable") from None
