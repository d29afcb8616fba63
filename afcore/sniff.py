"""Tell the files that reach `af` apart by their content: the one place that knows the kinds.

`file_kind` names what a file is (an .af agent file, a bundle, or a kind `af` does not take) for
the command line, which refuses a file of the wrong kind (AF0904); `identify_foreign` says why a
file is not an af agent file, for the reader's diagnostic (AF0023).

Letta's agent files share the `.af` extension (JSON with `agents`, `blocks`, `tools`,
`mcp_servers`), a bundle (`.afb`) is easily passed for its source, and ONNX or safetensors files
hold "the network". Read as an af file, each gives a page of YAML or schema errors that say nothing
of the real mistake; `identify_foreign` names the kind instead, so that the reader reports one
diagnostic (AF0023) with a hint at the tool that takes it. Only the first bytes are looked at,
except for a JSON document, which is parsed whole (it has no other way to say what it is).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

__all__ = ["ZSTD_MAGIC", "ForeignFile", "file_kind", "identify_foreign", "is_skippable_frame"]

#: the four bytes every zstd frame starts with (RFC 8878)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: JSON documents at most this big are parsed to see their keys (an af header is at most 1 MiB)
_MAX_JSON_BYTES = 64 * 1024 * 1024
#: the keys of an af header: a JSON document with any of them is left to the usual checks
_AF_KEYS = frozenset({"version", "name", "neural_config", "workflows"})
#: keys of Letta's agent files: `agents`... in the current format, `llm_config`... in the first one
_LETTA_KEYS = frozenset({"agents", "blocks", "mcp_servers", "llm_config", "core_memory", "agent_type",
                         "tool_rules", "in_context_message_indices"})
#: ONNX `ModelProto` field tags that may follow `ir_version` (field 1, the first one writers emit)
_ONNX_NEXT_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0x7A, 0x82})
#: other kinds told by their first bytes
_MAGIC = (
    (b"\x1f\x8b", "a gzip file", "decompress it first (`gunzip`)"),
    (b"PK\x03\x04", "a zip archive", "unpack it first; an af agent file is YAML text"),
    (b"\x7fELF", "an executable (ELF)", "pass the .af source file"),
    (b"\x89PNG", "a PNG image", "pass the .af source file"),
)
_AF_HINT = "an af agent file is YAML text starting with `version: \"1.0\"` (docs/format.md); `af init NAME` writes one"


@dataclass(frozen=True)
class ForeignFile:
    """What a file that is not an af agent file is.

    Attributes:
        kind: ``letta``, ``bundle``, ``zstd``, ``onnx``, ``safetensors``, ``json`` or ``binary``.
        message: the diagnostic's message (`STYLE.md` §4: lowercase, no trailing period).
        hint: the fix, naming the tool that takes such a file where there is one.
    """

    kind: str
    message: str
    hint: str


def identify_foreign(data: bytes) -> ForeignFile | None:
    """Return what ``data`` is when it is plainly not an af agent file, else None.

    Args:
        data: the whole file.

    Returns:
        The kind, message and hint; None for anything that may be an af file (its own checks
        then say what is wrong with it).
    """
    head = data[:16]
    if head.startswith(ZSTD_MAGIC) or is_skippable_frame(head):
        return _zstd_kind(data)
    if _is_safetensors(data):
        return ForeignFile("safetensors", "this is a safetensors file, not an af agent file",
                           "to use these tensors as an agent's weights: `af pack AGENT.af --weights THIS_FILE`")
    if len(head) >= 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in _ONNX_NEXT_TAGS:
        return ForeignFile("onnx", "this is an ONNX model (protobuf), not an af agent file",
                           "an af agent file declares its network in `neural_config`, with the weights in "
                           "its `neural_weights` section; `af init NAME` writes one")
    for magic, what, hint in _MAGIC:
        if head.startswith(magic):
            return ForeignFile("binary", f"this is {what}, not an af agent file", hint)
    return _json_kind(data)


#: the bytes text may hold: tab, newline, form feed, carriage return, escape, printable ASCII and UTF-8
_TEXT_BYTES = bytes([9, 10, 12, 13, 27, *range(32, 127), *range(128, 256)])
#: what starts a section of an .af file (`afc.reader`); a raw section's bytes follow its marker line
_SECTION_MARKER = b"---BINARY_SECTION:"


def file_kind(data: bytes) -> str:
    """Return what a file is, from its first bytes (or all of them).

    Args:
        data: the file's start (4 KiB are enough for all but a JSON document, which is named only
            when it is whole).

    Returns:
        ``agent`` (text: an .af file, or something its own checks will refuse), ``bundle`` (zstd
        data: the bundle reader says if it is not one), ``empty``, ``tar``, or one of the kinds of
        `identify_foreign`: ``letta``, ``onnx``, ``safetensors``, ``json``, ``binary``.
    """
    if not data:
        return "empty"
    if data[257:262] == b"ustar":
        return "tar"
    foreign = identify_foreign(data)
    if foreign is not None:
        return "bundle" if foreign.kind == "zstd" else foreign.kind
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") and b'"agents"' in data[:4096]:
        return "letta"  # a Letta file too long to be parsed from its start
    head = data[:4096]
    marker = head.find(_SECTION_MARKER)
    text = head[:marker] if marker != -1 else head
    # A stray control byte in a text header is the reader's to report (with its line); binary data
    # is full of them.
    if len(text.translate(None, _TEXT_BYTES)) > max(1, len(text) // 20):
        return "binary"
    return "agent"


def is_skippable_frame(head: bytes) -> bool:
    """Whether ``head`` starts a zstd skippable frame (magic 0x184D2A50-0x184D2A5F, RFC 8878 §3.1.2)."""
    return len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"


def _zstd_kind(data: bytes) -> ForeignFile:
    if _is_bundle(data):
        return ForeignFile("bundle", "this is an af bundle (a compiled agent), not an af agent file",
                           "run it with `af run FILE` or look inside with `af inspect FILE`; "
                           "`af validate` checks the .af source")
    return ForeignFile("zstd", "this is a zstd-compressed file, not an af agent file",
                       f"decompress it first (`zstd -d FILE`); {_AF_HINT}")


def _is_bundle(data: bytes) -> bool:
    """Whether the zstd data starts a tar archive whose first member is `manifest.json` (docs/bundle.md)."""
    import zstandard

    try:
        reader = zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(data, read_across_frames=False)
        block = reader.read(512)  # a tar header; zstd decodes no more than this block needs
    except zstandard.ZstdError:
        return False
    return len(block) == 512 and block[:14] == b"manifest.json\x00" and block[257:262] == b"ustar"


def _is_safetensors(data: bytes) -> bool:
    # An 8-byte little-endian header size, then the JSON header: text files never fit (their first
    # eight bytes read as a size far beyond the file).
    if len(data) < 10:
        return False
    (size,) = struct.unpack_from("<Q", data)
    if not 2 <= size <= _MAX_JSON_BYTES or data[8:10] not in (b'{"', b"{}"):
        return False
    if size > len(data) - 8:
        return True  # only the start of a long header is here (a command sniffs the first 4 KiB)
    return data[8 : 8 + size].rstrip(b" ").endswith(b"}")  # the writer pads the header with spaces


def _json_kind(data: bytes) -> ForeignFile | None:
    text = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    if not text.lstrip()[:1] == b"{" or len(text) > _MAX_JSON_BYTES:
        return None
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):  # not JSON (maybe a YAML flow mapping): the YAML layer decides
        return None
    if not isinstance(document, dict) or {"neural_config", "workflows"} & document.keys():
        return None
    if _LETTA_KEYS & document.keys():
        return ForeignFile("letta", "this is a Letta agent file (JSON), not an af agent file",
                           "Letta's agent files share the .af extension: import it into a Letta server "
                           f"instead; {_AF_HINT}")
    if _AF_KEYS & document.keys():
        return None  # an af header written as JSON, with keys missing: the schema says which
    keys = ", ".join(f"`{key}`" for key in list(document)[:4]) or "no keys"
    return ForeignFile("json", f"this is a JSON document ({keys}), not an af agent file", _AF_HINT)
