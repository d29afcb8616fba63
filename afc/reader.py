"""Split an `.af` file into its YAML header text and its binary sections (docs/format.md, "Container").

The reader works on bytes and keeps byte offsets. It collects every container diagnostic it can find
(AF0001-AF0049) and raises one `ParseError` at the end if any of them is an error.

Hostile input is bounded: the header is capped at `MAX_HEADER_BYTES`; a section's zstd frame is
walked block by block to find its end (never by looking for the next marker), the decoder's window
is capped at `MAX_WINDOW_BYTES`, and the payload is decoded in a stream whose running size is capped
at ``max_section_bytes``, so a frame cannot make us allocate what its header merely declares.

Copies are kept few because sections may be gigabytes: a raw frame is decoded straight from the
file's bytes into the payload; base64 text wrapped as the writer wraps it is decoded piece by piece
into zstd's input, so the decoded frame never exists whole (other base64 is decoded first); a big
file's SHA-256 is computed in a thread while its sections are decoded.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Any, Collection, Literal

import zstandard

from afcore.diagnostics import Diagnostic
from afcore.errors import ParseError
from afcore.spans import SourceFile, Span

from afcore.sniff import ZSTD_MAGIC, identify_foreign, is_skippable_frame

__all__ = [
    "DEFAULT_MAX_SECTION_BYTES",
    "MARKER_PREFIX",
    "MAX_DIAGNOSTICS",
    "MAX_HEADER_BYTES",
    "MAX_WINDOW_BYTES",
    "SECTION_NAME_RE",
    "SEED_PLACEHOLDER",
    "ZSTD_MAGIC",
    "Container",
    "RawSection",
    "read_container",
]

#: cap on one section's decompressed size (`--max-section-bytes` changes it)
DEFAULT_MAX_SECTION_BYTES = 2 * 1024**3
#: cap on the YAML header (BOM excluded); an agent header is a few KiB
MAX_HEADER_BYTES = 1024 * 1024
#: cap on a zstd frame's window: the decoder allocates this much up front (zstd's own default limit)
MAX_WINDOW_BYTES = 1 << 27
#: the reader stops looking for more faults after this many (a hostile file could hold millions)
MAX_DIAGNOSTICS = 100
#: what a marker line starts with
MARKER_PREFIX = b"---BINARY_SECTION:"
#: a valid section name
SECTION_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
#: the text the original design put where the data should be
SEED_PLACEHOLDER = b"[compressed binary data]"

_BOM = b"\xef\xbb\xbf"
_MARKER_LINE = re.compile(rb"---BINARY_SECTION:(.*)---")
#: longer marker lines are malformed without a look (a valid one is at most 85 bytes)
_MAX_MARKER_LINE = 256
_BASE64_WHITESPACE = b" \t\r\n\v\f"
_BASE64_BAD_CHAR = re.compile(rb"[^A-Za-z0-9+/=\s]")
#: base64 text is decoded in chunks of this many characters (a multiple of 4) to bound copies
_BASE64_CHUNK = 4 * 1024 * 1024
#: characters per base64 line in files we write (the fast decoding path expects it)
_B64_WIDTH = 76
#: base64 groups (4 characters, 3 bytes) per line
_B64_GROUPS = _B64_WIDTH // 4
#: compressed bytes zstd asks its source for at a time
_STREAM_READ_SIZE = 1 << 20
#: the first read of a stream allocates at most this multiple of the frame's compressed size
_FIRST_READ_RATIO = 64
_FIRST_READ_MIN = 64 * 1024 * 1024
_LATER_READ = 64 * 1024 * 1024
_BLOCK_MAX = 128 * 1024
#: frames with more blocks than this are decoded by zstd's streaming decoder instead of walked
#: (a 2 GiB frame from a usual compressor has ~16,400 blocks of 128 KiB)
_WALK_MAX_BLOCKS = 65536
#: input bytes per call when zstd finds the frame's end (bounds one call's output to ~128 MiB)
_UNWALKED_FEED = 4096
#: longest line prefix decoded to count a column in characters
_MAX_DECODED_COLUMN = 64 * 1024
#: files at least this big are hashed in a thread while their sections are decoded
_THREADED_HASH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RawSection:
    """One binary section as found in the file.

    Attributes:
        name: the section name from the marker line.
        encoding: ``"base64"`` (text) or ``"raw"`` (the zstd frame's bytes follow the marker line).
        payload: the decompressed bytes; the frame's content checksum has been verified.
        span: the marker line (line, column 1).
        offset: byte offset of the marker line in the file.
    """

    name: str
    encoding: Literal["base64", "raw"]
    payload: bytes
    span: Span
    offset: int


@dataclass(frozen=True)
class Container:
    """An `.af` file split into header text and sections.

    Attributes:
        path: the path shown in diagnostics.
        header_text: the decoded UTF-8 header, BOM removed, line endings as in the file.
        header_source: ``header_text`` with a line index (lines are file lines: the header comes first).
        sections: the sections in file order.
        newline: ``"\\n"`` or ``"\\r\\n"``, what the file uses (its first line ending).
        bom: whether the file starts with a UTF-8 BOM.
        sha256: hex digest of the whole file's bytes.
    """

    path: str
    header_text: str
    header_source: SourceFile
    sections: tuple[RawSection, ...]
    newline: str
    bom: bool
    sha256: str

    def section(self, name: str) -> RawSection | None:
        """Return the section called ``name``, or None."""
        return next((s for s in self.sections if s.name == name), None)


class _Problem(Exception):
    """A container fault at a byte offset; `_Reader` turns it into a `Diagnostic`.

    ``resume`` is where reading can go on (the next marker), or None when the rest of the file
    cannot be framed any more (a raw frame that is cut short).
    """

    def __init__(self, code: str, message: str, offset: int, hint: str | None = None, resume: int | None = None):
        super().__init__(message)
        self.code, self.message, self.offset, self.hint, self.resume = code, message, offset, hint, resume
        self.notes: tuple[str, ...] = ()
        #: the offset is in binary bytes, which make no source line to show
        self.binary = False


def read_container(
    data: bytes,
    *,
    path: str,
    max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES,
    skip_payloads: Collection[str] = (),
) -> Container:
    """Split the bytes of an `.af` file into header text and decompressed sections.

    Args:
        data: the whole file.
        path: the path shown in diagnostics.
        max_section_bytes: cap on any one section's decompressed size.
        skip_payloads: names of sections that are framed but not decoded: their payload is ``b""``
            and faults inside their payload are not reported (`af pack` replaces such sections,
            e.g. the `[compressed binary data]` placeholder). A raw frame is still walked to find its end.

    Returns:
        The container, with every section's checksum verified.

    Raises:
        ParseError: with every container diagnostic found (AF0001-AF0049), if any is an error.
    """
    return _Reader(data, path, max_section_bytes, frozenset(skip_payloads)).read()


class _Reader:
    """One pass over one file's bytes: the header, then each section in turn, collecting diagnostics."""

    def __init__(self, data: bytes, path: str, max_section_bytes: int, skip: frozenset[str]) -> None:
        self.skip = skip
        self.data = data
        self.view = memoryview(data)
        self.path = path
        self.cap = max_section_bytes
        self.diagnostics: list[Diagnostic] = []
        self.last_line = (0, 1)
        self.bom = data.startswith(_BOM)
        self.start = len(_BOM) if self.bom else 0

    # -- positions -------------------------------------------------------------------------------

    def span_at(self, offset: int, length: int = 0) -> Span:
        """Return the span of a byte offset; columns count characters of the line (bytes on a binary one)."""
        line = self.line_at(offset)
        line_start = max(self.data.rfind(b"\n", 0, offset) + 1, self.start)
        if offset - line_start <= _MAX_DECODED_COLUMN:
            column = len(str(self.view[line_start:offset], "utf-8", "replace")) + 1
        else:  # a raw frame is one long "line": decoding it to count characters would cost its size
            column = offset - line_start + 1
        return Span(self.path, line, column, line, column + length) if length else Span(self.path, line, column)

    def line_at(self, offset: int) -> int:
        """Return the 1-based line of ``offset``, counting on from the last answer (offsets mostly grow)."""
        known_offset, known_line = self.last_line
        if offset < known_offset:
            known_offset, known_line = 0, 1
        line = known_line + self.data.count(b"\n", known_offset, offset)
        self.last_line = (offset, line)
        return line

    def report(self, problem: _Problem, severity: str = "error") -> None:
        self.diagnostics.append(
            Diagnostic(
                problem.code,
                severity,  # type: ignore[arg-type]
                problem.message,
                span=self.span_at(problem.offset),
                help=problem.hint,
                notes=problem.notes,
            )
        )

    # -- the file --------------------------------------------------------------------------------

    def read(self) -> Container:
        foreign = identify_foreign(self.data)
        if foreign is not None:
            # One diagnostic that names the kind, rather than a page of YAML errors about binary bytes.
            self.report(_Problem("AF0023", foreign.message, 0, foreign.hint))
            raise ParseError(self.diagnostics)
        digest, hashing = _start_sha256(self.data)
        first_marker = self.find_marker(self.start)
        if self.find_bare_cr(first_marker):
            if hashing is not None:
                hashing.join()
            raise ParseError(self.diagnostics)
        header_text = self.read_header(first_marker)
        sections = self.read_sections(first_marker)
        if hashing is not None:
            hashing.join()
        if any(d.is_error for d in self.diagnostics):
            raise ParseError(self.diagnostics)
        return Container(
            path=self.path,
            header_text=header_text,
            header_source=SourceFile(self.path, header_text),
            sections=tuple(sections),
            newline=self.detect_newline(),
            bom=self.bom,
            sha256=digest.hexdigest(),
        )

    def find_bare_cr(self, end: int) -> bool:
        """Report a CR that is not followed by LF in the header: the format's line endings are LF or CRLF.

        A file with CR-only line endings (classic Mac) has no LF at all, so its marker lines are not
        found and the whole file reads as one broken YAML line; saying so is the useful diagnostic.
        """
        limit = min(end, self.start + MAX_HEADER_BYTES + 1)
        bare = _BARE_CR.search(self.data, self.start, limit)
        if bare is None:
            return False
        if self.data.find(b"\n", self.start, limit) == -1:
            message = "the file uses CR line endings; the format wants LF or CRLF"
        else:
            message = "the header has a line ending that is a lone CR; the format wants LF or CRLF"
        self.report(_Problem("AF0020", message, bare.start(),
                             "convert the line endings to LF, e.g. `tr '\\r' '\\n' < OLD.af > NEW.af` for a "
                             "CR-only file, or set your editor to LF"))
        return True

    def detect_newline(self) -> str:
        first = self.data.find(b"\n", self.start)
        return "\r\n" if first > 0 and self.data[first - 1 : first] == b"\r" else "\n"

    def find_marker(self, pos: int) -> int:
        """Return the offset of the first marker line starting at or after ``pos`` (a line start), or len."""
        if self.data.startswith(MARKER_PREFIX, pos):
            return pos
        found = self.data.find(b"\n" + MARKER_PREFIX, pos)
        return len(self.data) if found == -1 else found + 1

    def read_header(self, end: int) -> str:
        size = end - self.start
        if size > MAX_HEADER_BYTES:
            self.report(
                _Problem(
                    "AF0002",
                    f"the header is {size} bytes, more than the {MAX_HEADER_BYTES}-byte limit",
                    self.start,
                    "an agent header is a few KiB; put large data in a binary section",
                )
            )
            return ""
        try:
            return str(self.view[self.start : end], "utf-8")
        except UnicodeDecodeError as exc:
            bad = self.start + exc.start
            self.report(
                _Problem(
                    "AF0001",
                    f"the header is not valid UTF-8 (byte 0x{self.data[bad]:02x})",
                    bad,
                    "save the file as UTF-8",
                )
            )
            return ""

    # -- sections --------------------------------------------------------------------------------

    def read_sections(self, pos: int) -> list[RawSection]:
        sections: list[RawSection] = []
        first_seen: dict[str, int] = {}
        while pos < len(self.data):
            if len(self.diagnostics) >= MAX_DIAGNOSTICS:
                self.report(_Problem("AF0019", f"stopped after {MAX_DIAGNOSTICS} errors", pos), severity="note")
                break
            marker = pos
            name, body = self.read_marker(marker)
            try:
                encoding, payload, pos = self.read_payload(body, decode=name not in self.skip)
            except _Problem as problem:
                if self.data.startswith(ZSTD_MAGIC, body) or problem.binary:
                    # Binary bytes make no source line: point at the marker, give the byte offset.
                    problem.offset, problem.notes = marker, (f"at byte offset {problem.offset} of the file",)
                self.report(problem)
                if problem.resume is None:
                    break
                pos = problem.resume
                continue
            if name is None:
                continue
            if name in first_seen:
                self.report_duplicate(name, marker, first_seen[name])
                continue
            first_seen[name] = marker
            sections.append(RawSection(name, encoding, payload, self.span_at(marker), marker))
        return sections

    def report_duplicate(self, name: str, marker: int, first: int) -> None:
        first_line = self.span_at(first).line
        self.diagnostics.append(
            Diagnostic(
                "AF0005",
                "error",
                f"section `{name}` is defined twice",
                span=self.span_at(marker, len(MARKER_PREFIX) + len(name) + 3),
                help=f"remove one of the two sections (the first is on line {first_line})",
            )
        )

    def read_marker(self, marker: int) -> tuple[str | None, int]:
        """Check the marker line at ``marker``; return the section name (None if bad) and the body offset."""
        line_end = self.data.find(b"\n", marker)
        body = len(self.data) if line_end == -1 else line_end + 1
        line = bytes(self.view[marker : min(body, marker + _MAX_MARKER_LINE + 1)]).rstrip(b"\n").removesuffix(b"\r")
        match = _MARKER_LINE.fullmatch(line) if len(line) <= _MAX_MARKER_LINE else None
        if match is None:
            self.report(
                _Problem(
                    "AF0003",
                    "malformed section marker line",
                    marker,
                    "a marker line is exactly `---BINARY_SECTION:<name>---`, alone on its line",
                )
            )
            return None, body
        name = match.group(1).decode("utf-8", "replace")
        if SECTION_NAME_RE.fullmatch(name) is None:
            self.diagnostics.append(
                Diagnostic(
                    "AF0004",
                    "error",
                    f"invalid section name `{name}`",
                    span=self.span_at(marker + len(MARKER_PREFIX), max(len(name), 1)),
                    help="a section name matches [A-Za-z_][A-Za-z0-9_.-]{0,63}",
                )
            )
            return None, body
        return name, body

    def read_payload(self, body: int, *, decode: bool = True) -> tuple[Literal["base64", "raw"], bytes, int]:
        """Decode the payload starting at ``body``; return its encoding, bytes and the next marker's offset."""
        if self.data.startswith(ZSTD_MAGIC, body):
            return ("raw", *self.read_raw(body, decode))
        end = self.find_marker(body)
        _refuse_binary(self.data[body : body + 8], body, resume=end)
        return "base64", self.read_base64(body, end) if decode else b"", end

    def read_raw(self, body: int, decode: bool) -> tuple[bytes, int]:
        payload, end = _read_frame(self.view, body, self.cap, decode=decode)
        pos = end
        if self.data.startswith(b"\r\n", pos):
            pos += 2
        elif self.data.startswith(b"\n", pos):
            pos += 1
        if pos < len(self.data) and not self.data.startswith(MARKER_PREFIX, pos):
            raise _Problem(
                "AF0015",
                "unexpected data after the section's zstd frame",
                pos,
                "a raw section is one zstd frame, then at most one newline, then the next marker or the end",
                resume=self.find_marker(self.next_line(pos)),
            )
        return payload, pos

    def read_base64(self, body: int, end: int) -> bytes:
        text = self.view[body:end]
        if len(text) < 256:
            stripped = bytes(text).strip()
            if stripped == SEED_PLACEHOLDER:
                raise _Problem(
                    "AF0007",
                    "the section holds the placeholder `[compressed binary data]`, not data",
                    body,
                    "pack real tensors into it with `af pack FILE --weights W.safetensors`",
                    resume=end,
                )
            if not stripped:
                raise _Problem("AF0006", "the section is empty", max(body - 1, 0), "remove the marker line or pack data", resume=end)
        try:
            return self.read_base64_frame(_Base64Frame.of(self.view[body:end]), body, end)
        except _NotCanonical:
            return self.read_base64_frame(self.decode_base64_strict(body, end), body, end)

    def read_base64_frame(self, frame: Any, body: int, end: int) -> bytes:
        """Read the zstd frame held by decoded base64 (bytes, or a `_Base64Frame`)."""
        try:
            if len(frame) == 0:
                raise _Problem("AF0006", "the section is empty", 0, "remove the marker line or pack data")
            if frame[:4] != ZSTD_MAGIC:
                _refuse_binary(bytes(frame[:8]), 0, encoded=True)
                raise _Problem("AF0010", "the section's payload is not a zstd frame", 0, "payloads are zstd frames")
            payload, frame_end = _read_frame(memoryview(frame) if isinstance(frame, bytearray) else frame, 0, self.cap)
            if frame_end != len(frame):
                raise _Problem(
                    "AF0015",
                    f"{len(frame) - frame_end} bytes of data after the section's zstd frame",
                    0,
                    "a section holds exactly one zstd frame",
                )
            return payload
        except _Problem as problem:
            # Offsets inside decoded base64 have no exact place in the text: point at the first data line.
            problem.offset, problem.resume = body, end
            raise

    def decode_base64_strict(self, body: int, end: int) -> bytearray:
        """Decode base64 text (any whitespace ignored) in chunks, into one preallocated buffer."""
        text = self.view[body:end]
        out = bytearray(len(text) * 3 // 4 + 3)
        filled, carry, padded = 0, b"", False
        for start in range(0, len(text), _BASE64_CHUNK):
            piece = carry + bytes(text[start : start + _BASE64_CHUNK]).translate(None, _BASE64_WHITESPACE)
            usable = len(piece) - len(piece) % 4
            if padded and piece:
                raise self.base64_problem(body, end, "base64 data continues after its `=` padding")
            try:
                decoded = binascii.a2b_base64(piece[:usable], strict_mode=True)
            except binascii.Error as exc:
                raise self.base64_problem(body, end, f"invalid base64 ({exc})") from None
            out[filled : filled + len(decoded)] = decoded
            filled += len(decoded)
            carry, padded = piece[usable:], piece[:usable].endswith(b"=")
        if carry:
            raise self.base64_problem(body, end, "base64 text is cut short (its length is not a multiple of 4)")
        del out[filled:]
        return out

    def base64_problem(self, body: int, end: int, message: str) -> _Problem:
        bad = _BASE64_BAD_CHAR.search(self.data, body, end)
        hint = "the payload is standard base64 (A-Z a-z 0-9 + / and = padding), wrapped at 76 columns"
        if bad is not None:
            char = bad.group().decode("latin-1")
            return _Problem("AF0008", f"invalid character {char!r} in base64 payload", bad.start(), hint, resume=end)
        return _Problem("AF0009", message, body, hint, resume=end)

    def next_line(self, offset: int) -> int:
        found = self.data.find(b"\n", offset)
        return len(self.data) if found == -1 else found + 1


#: a CR not followed by LF
_BARE_CR = re.compile(rb"\r(?!\n)")
#: control bytes that text never holds (whitespace aside)
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f\x7f]")
#: what a section that is not a zstd frame may hold instead, by its first bytes
_KNOWN_PAYLOADS = (
    (b"\x1f\x8b", "gzip data"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"BZh", "bzip2 data"),
    (b"\x04\x22\x4d\x18", "an LZ4 frame"),
)
_SECTION_HINT = ("a section holds one zstd frame with a content checksum, raw or as base64 text: re-pack it "
                 "with `af pack`, or compress it with `zstd -C`")


def _refuse_binary(head: bytes, offset: int, *, encoded: bool = False, resume: int | None = None) -> None:
    """Raise a `_Problem` that says what a section holds when its first bytes are binary but not a zstd frame.

    Without this, a raw section of another kind is read as base64 and reported as a bad character.

    Args:
        head: the section's first bytes (after base64 decoding when ``encoded``).
        offset: where the section's data starts in the file.
        encoded: whether the bytes came out of base64 text (then any byte may be binary).
        resume: where reading may go on (the next marker line).
    """
    stored = "base64 text decodes to" if encoded else "section holds"
    if is_skippable_frame(head):
        magic = int.from_bytes(head[:4], "little")
        problem = _Problem("AF0021", f"the {stored} a zstd skippable frame (magic 0x{magic:08X}), not a zstd data "
                           "frame", offset, "remove the skippable frame: " + _SECTION_HINT, resume=resume)
    elif encoded:
        return
    elif any(head.startswith(magic) for magic, _ in _KNOWN_PAYLOADS):
        what = next(what for magic, what in _KNOWN_PAYLOADS if head.startswith(magic))
        problem = _Problem("AF0022", f"the section holds {what}, not a zstd frame", offset, _SECTION_HINT, resume)
    elif _is_binary(head):
        shown = " ".join(f"{byte:02x}" for byte in head[:4])
        problem = _Problem("AF0022", f"the section holds binary data that is not a zstd frame (it starts {shown})",
                           offset, _SECTION_HINT, resume)
    else:
        return
    problem.binary = not encoded
    raise problem


def _is_binary(head: bytes) -> bool:
    """Whether the first bytes of a section are binary rather than (perhaps bad) text."""
    if _CONTROL.search(head):
        return True
    try:  # final=False: the cut may end inside a character
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return True
    return False


class _NotCanonical(Exception):
    """The base64 text is not wrapped as the writer wraps it: decode it the strict way instead."""


class _Base64Frame:
    """Random access to the bytes of base64 text wrapped as our writer wraps it, decoding only what is asked.

    Block headers are read a few bytes at a time and the frame is streamed to zstd, so the decoded
    frame never exists whole. `binascii.a2b_base64`'s lenient mode skips unknown characters and
    stops at padding; each of those makes a decoded range shorter than its character count
    predicts, so checking every length proves the text clean (else `_NotCanonical`).
    """

    def __init__(self, text: memoryview, newline: int, groups: int, pads: int) -> None:
        self.text, self.stride, self.groups, self.pads = text, _B64_WIDTH + newline, groups, pads
        self.size = groups * 3 - pads

    @classmethod
    def of(cls, text: memoryview) -> _Base64Frame:
        """Check the line ends of ``text`` (one strided slice per newline byte) and return its view.

        Raises:
            _NotCanonical: when the lines are not all `_B64_WIDTH` characters but the last.
        """
        first_line = bytes(text[: _B64_WIDTH + 2])
        newline = b"\r\n" if b"\r\n" in first_line else b"\n"
        full, rest = divmod(len(text), _B64_WIDTH + len(newline))
        if rest and (rest <= len(newline) or text[len(text) - len(newline) :] != newline):
            raise _NotCanonical
        for k in range(len(newline)):
            if text[_B64_WIDTH + k :: _B64_WIDTH + len(newline)] != newline[k : k + 1] * full:
                raise _NotCanonical
        chars = len(text) - (full + (1 if rest else 0)) * len(newline)
        tail = bytes(text[max(0, len(text) - 8) :]).rstrip(b"\r\n")
        pads = len(tail) - len(tail.rstrip(b"="))
        if chars % 4 or pads > 2:
            raise _NotCanonical
        return cls(text, len(newline), chars // 4, pads)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(self.size)
        if start >= stop:
            return b""
        first, last = start // 3, (stop - 1) // 3
        decoded = self.decode_groups(first, last + 1)
        return decoded[start - first * 3 : stop - first * 3]

    def decode_groups(self, first: int, end: int) -> bytes:
        """Decode groups ``first`` to ``end`` (exclusive), checking that nothing was skipped."""
        begin = (first // _B64_GROUPS) * self.stride + (first % _B64_GROUPS) * 4
        last = end - 1
        finish = (last // _B64_GROUPS) * self.stride + (last % _B64_GROUPS) * 4 + 4
        try:
            decoded = binascii.a2b_base64(self.text[begin:finish])
        except binascii.Error:
            raise _NotCanonical from None
        if len(decoded) != (end - first) * 3 - (self.pads if end == self.groups else 0):
            raise _NotCanonical
        return decoded


class _FrameStream:
    """A file-like window ``[start, end)`` on a `_Base64Frame`, for zstd's stream reader."""

    def __init__(self, frame: _Base64Frame, start: int, end: int) -> None:
        self.frame, self.pos, self.end = frame, start, end

    def read(self, size: int = -1) -> bytes:
        stop = self.end if size < 0 else min(self.end, self.pos + size)
        data = self.frame[self.pos : stop]
        self.pos = stop
        return data


def _start_sha256(data: bytes) -> tuple[Any, threading.Thread | None]:
    """Hash the file, in a thread for a big file: hashlib and zstd release the GIL, so the digest
    costs no wall time next to decoding the sections (it would otherwise add ~40% to a raw read)."""
    digest = hashlib.sha256()
    if len(data) < _THREADED_HASH_BYTES:
        digest.update(data)
        return digest, None
    thread = threading.Thread(target=digest.update, args=(memoryview(data),), name="af-sha256", daemon=True)
    thread.start()
    return digest, thread


def _read_frame(buf: Any, start: int, cap: int, *, decode: bool = True) -> tuple[bytes, int]:
    """Find the end of the zstd frame at ``start`` and decode it (unless ``decode`` is False).

    Returns:
        The payload (``b""`` when not decoding) and the offset just past the frame.

    Raises:
        _Problem: for a truncated, malformed, refused or oversized frame.
    """
    params, blocks_at = _frame_params(buf, start, cap)
    walked = _walk_blocks(buf, blocks_at, start, cap)
    if walked is None:
        # Thousands of tiny blocks: walking them in Python would take a minute per GB, zstd takes a second.
        return _decompress_unwalked(buf, start, cap)
    end, most = walked
    if not decode:
        return b"", end
    # A _Base64Frame is streamed, so that the decoded frame never exists whole next to the payload.
    source = buf[start:end] if isinstance(buf, memoryview) else _FrameStream(buf, start, end)
    return _decompress(source, end - start, params, cap, start, most=most), end


def _frame_params(buf: memoryview, start: int, cap: int) -> tuple[zstandard.FrameParameters, int]:
    """Parse and check the frame header at ``start``; return it and the offset of the first block."""
    head = bytes(buf[start : start + 18])
    try:
        params = zstandard.get_frame_parameters(head)
        blocks_at = start + zstandard.frame_header_size(head)
    except zstandard.ZstdError as exc:
        raise _Problem("AF0011", f"truncated or invalid zstd frame header ({exc})", start, _ZSTD_HINT) from None
    _check_params(params, cap, start)
    return params, blocks_at


def _walk_blocks(buf: memoryview, pos: int, start: int, cap: int) -> tuple[int, int] | None:
    """Walk the block headers from ``pos`` (RFC 8878 §3.1.1).

    Returns:
        The frame's end and the most its blocks can produce (raw and RLE blocks say what they
        produce, a compressed block at most `_BLOCK_MAX`); None past `_WALK_MAX_BLOCKS` blocks.
    """
    produced, compressed, size = 0, 0, len(buf)
    for _ in range(_WALK_MAX_BLOCKS):
        if pos + 3 > size:
            raise _Problem("AF0011", "the zstd frame is cut short (a block header is missing)", min(pos, size), _ZSTD_HINT)
        header = int.from_bytes(buf[pos : pos + 3], "little")
        last, kind, block_size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3 or block_size > _BLOCK_MAX:
            raise _Problem("AF0012", "corrupt zstd frame (invalid block header)", pos, _ZSTD_HINT)
        produced += block_size if kind in (0, 1) else 0  # raw and RLE blocks say what they produce
        compressed += kind == 2
        if produced > cap:
            raise _too_big(cap, start)
        pos += 3 + (1 if kind == 1 else block_size)
        if pos > size:
            raise _Problem("AF0011", "the zstd frame is cut short (a block ends past the data)", size, _ZSTD_HINT)
        if last:
            if pos + 4 > size:
                raise _Problem("AF0011", "the zstd frame is cut short (its checksum is missing)", size, _ZSTD_HINT)
            return pos + 4, produced + compressed * _BLOCK_MAX
    return None


def _decompress_unwalked(buf: memoryview, start: int, cap: int) -> tuple[bytes, int]:
    """Decode a frame of very many blocks with zstd's own streaming decoder, which also finds its end.

    Input goes in `_UNWALKED_FEED`-byte pieces so one call cannot produce more than ~128 MiB
    (an RLE block turns 4 bytes into 128 KiB); the running total is checked against ``cap``.
    """
    decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).decompressobj()
    chunks: list[bytes] = []
    total, pos = 0, start
    while not decoder.eof:
        if pos >= len(buf):
            raise _Problem("AF0011", "the zstd frame is cut short", len(buf), _ZSTD_HINT)
        piece = buf[pos : pos + _UNWALKED_FEED]
        pos += len(piece)
        try:
            out = decoder.decompress(piece)
        except zstandard.ZstdError as exc:
            code = "AF0013" if "checksum" in str(exc) else "AF0012"
            raise _Problem(code, f"corrupt zstd frame ({exc})", start, _ZSTD_HINT) from None
        total += len(out)
        if total > cap:
            raise _too_big(cap, start)
        chunks.append(out)
    return b"".join(chunks), pos - len(decoder.unused_data)


def _check_params(params: zstandard.FrameParameters, cap: int, offset: int) -> None:
    if params.dict_id:
        raise _Problem("AF0018", "the zstd frame needs a dictionary", offset, "compress without a dictionary")
    if params.window_size > MAX_WINDOW_BYTES:
        raise _Problem(
            "AF0017",
            f"the zstd frame's window is {params.window_size} bytes, more than the {MAX_WINDOW_BYTES}-byte limit",
            offset,
            "compress with a window of at most 128 MiB (zstd levels 1-19 do)",
        )
    if not params.has_checksum:
        raise _Problem("AF0014", "the zstd frame has no content checksum", offset, "compress with the checksum on (zstd -C, write_checksum=True)")
    if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > cap:
        raise _too_big(cap, offset)


def _too_big(cap: int, offset: int) -> _Problem:
    return _Problem(
        "AF0016",
        f"the section decompresses to more than {cap} bytes",
        offset,
        "raise the limit with --max-section-bytes if the file is trusted",
    )


def _decompress(frame: Any, frame_size: int, params: zstandard.FrameParameters, cap: int, offset: int,
                *, most: int = 0) -> bytes:
    """Decode one walked frame (a buffer, or an object with ``read``) in a capped stream; verify its checksum.

    The first read is sized from the declared size when the walked blocks can produce it (``most``),
    else never beyond `_FIRST_READ_RATIO` times the compressed size, so a lying header costs
    nothing, and a usual frame decodes in one pass, one copy. Without the first rule a highly
    compressed section (1 GiB of zeros in 45 KB) was read in pieces and joined: twice its size.
    """
    reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).stream_reader(
        frame, read_size=_STREAM_READ_SIZE, read_across_frames=False
    )
    declared = None if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else params.content_size
    size = max(_FIRST_READ_MIN, _FIRST_READ_RATIO * frame_size)
    size = min(size, declared) if declared is not None else size
    if declared is not None and declared <= most:
        size = declared
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            block = reader.read(max(1, min(size, cap + 1 - total)))
        except zstandard.ZstdError as exc:
            code = "AF0013" if "checksum" in str(exc) else "AF0012"
            raise _Problem(code, f"corrupt zstd frame ({exc})", offset, _ZSTD_HINT) from None
        if not block:
            break
        total += len(block)
        if total > cap:
            raise _too_big(cap, offset)
        chunks.append(block)
        size = 1 if total == declared else _LATER_READ
    if declared is not None and total != declared:
        raise _Problem("AF0012", f"corrupt zstd frame (declares {declared} bytes, holds {total})", offset, _ZSTD_HINT)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_ZSTD_HINT = "the file is damaged: rebuild it, or re-pack the section with `af pack`"
