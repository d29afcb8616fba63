"""afc.reader: the container grammar of docs/format.md and every hostile input of the corpus."""

from __future__ import annotations

import base64
import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from afc.reader import MAX_DIAGNOSTICS, MAX_HEADER_BYTES, Container, _Base64Frame, read_container
from afc.writer import encode_base64_lines
from afcore.errors import ParseError

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "bad"
CONTAINER_CASES = sorted(CORPUS.glob("container-*.af"))


def frame(payload: bytes, **options) -> bytes:
    options.setdefault("write_checksum", True)
    return zstandard.ZstdCompressor(level=3, **options).compress(payload)


def b64(payload: bytes) -> bytes:
    return base64.encodebytes(frame(payload))


def read(data: bytes, **options) -> Container:
    return read_container(data, path="agent.af", **options)


def codes_of(data: bytes, **options) -> list[str]:
    with pytest.raises(ParseError) as info:
        read(data, **options)
    return [d.code for d in info.value.diagnostics]


class TestHeader:
    def test_file_without_sections_is_all_header(self):
        container = read(b"name: x\nversion: '1.0'\n")
        assert container.header_text == "name: x\nversion: '1.0'\n"
        assert container.sections == ()

    def test_header_ends_at_first_marker_line(self):
        data = b"a: 1\nb: 2\n---BINARY_SECTION:w---\n" + b64(b"payload")
        container = read(data)
        assert container.header_text == "a: 1\nb: 2\n"
        assert container.header_source.line_text(2) == "b: 2"

    def test_marker_not_at_line_start_belongs_to_header(self):
        data = b"a: ' ---BINARY_SECTION:w---'\n"
        assert read(data).header_text == data.decode()

    def test_bom_is_removed_and_remembered(self):
        container = read(b"\xef\xbb\xbfa: 1\n")
        assert container.header_text == "a: 1\n"
        assert container.bom is True

    def test_crlf_is_kept_and_detected(self):
        data = b"a: 1\r\nb: 2\r\n---BINARY_SECTION:w---\r\n" + b64(b"x").replace(b"\n", b"\r\n")
        container = read(data)
        assert container.newline == "\r\n"
        assert container.header_text == "a: 1\r\nb: 2\r\n"
        assert container.sections[0].payload == b"x"

    def test_lf_is_detected(self):
        assert read(b"a: 1\n").newline == "\n"

    def test_sha256_is_of_the_whole_file(self):
        data = b"a: 1\n---BINARY_SECTION:w---\n" + b64(b"x")
        assert read(data).sha256 == hashlib.sha256(data).hexdigest()

    def test_non_utf8_header_points_at_the_byte(self):
        with pytest.raises(ParseError) as info:
            read(b"a: 1\nname: caf\xe9\n")
        (diagnostic,) = info.value.diagnostics
        assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("AF0001", 2, 10)

    def test_oversize_header(self):
        assert codes_of(b"#" * (MAX_HEADER_BYTES + 1)) == ["AF0002"]

    def test_header_at_the_cap_is_accepted(self):
        assert len(read(b"#" * MAX_HEADER_BYTES).header_text) == MAX_HEADER_BYTES


class TestSections:
    def test_base64_and_raw_sections_in_file_order(self):
        raw_frame = frame(b"raw payload")
        data = b"h: 1\n---BINARY_SECTION:b---\n" + b64(b"text") + b"---BINARY_SECTION:r---\n" + raw_frame + b"\n"
        container = read(data)
        assert [(s.name, s.encoding, s.payload) for s in container.sections] == [
            ("b", "base64", b"text"),
            ("r", "raw", b"raw payload"),
        ]

    def test_spans_and_offsets_point_at_marker_lines(self):
        data = b"h: 1\n---BINARY_SECTION:b---\n" + b64(b"text") + b"---BINARY_SECTION:c---\n" + b64(b"more")
        first, second = read(data).sections
        assert (first.span.line, first.span.column, first.offset) == (2, 1, 5)
        assert data[second.offset :].startswith(b"---BINARY_SECTION:c---")
        assert second.span.line == data[: second.offset].count(b"\n") + 1

    def test_raw_frame_containing_marker_bytes_is_not_split(self):
        # A stored (raw) zstd block keeps the marker text verbatim inside the frame.
        payload = bytes(range(256)) * 4 + b"\n---BINARY_SECTION:evil---\n" + bytes(range(255, -1, -1)) * 4
        raw_frame = frame(payload)
        assert b"---BINARY_SECTION:evil---" in raw_frame
        data = b"h: 1\n---BINARY_SECTION:r---\n" + raw_frame + b"\n---BINARY_SECTION:z---\n" + b64(b"z")
        container = read(data)
        assert [s.name for s in container.sections] == ["r", "z"]
        assert container.sections[0].payload == payload

    @pytest.mark.parametrize("after", [b"", b"\n", b"\r\n"])
    def test_raw_frame_then_at_most_one_newline(self, after: bytes):
        data = b"h: 1\n---BINARY_SECTION:r---\n" + frame(b"abc") + after
        assert read(data).sections[0].payload == b"abc"

    def test_two_newlines_after_raw_frame_is_trailing_data(self):
        data = b"h: 1\n---BINARY_SECTION:r---\n" + frame(b"abc") + b"\n\n"
        assert codes_of(data) == ["AF0015"]

    def test_base64_whitespace_and_line_width_are_free(self):
        text = base64.b64encode(frame(b"payload" * 50))
        spaced = b"  ".join(text[i : i + 10] for i in range(0, len(text), 10)) + b"\n\n"
        data = b"h: 1\n---BINARY_SECTION:w---\n" + spaced
        assert read(data).sections[0].payload == b"payload" * 50

    def test_empty_frame_payload(self):
        assert read(b"h: 1\n---BINARY_SECTION:w---\n" + b64(b"")).sections[0].payload == b""

    def test_marker_at_file_start_gives_empty_header(self):
        container = read(b"---BINARY_SECTION:w---\n" + b64(b"x"))
        assert container.header_text == ""
        assert container.section("w").payload == b"x"

    def test_section_lookup_by_name(self):
        container = read(b"h: 1\n---BINARY_SECTION:w---\n" + b64(b"x"))
        assert container.section("w").payload == b"x"
        assert container.section("missing") is None

    @pytest.mark.parametrize("name", [b"a", b"_x", b"neural_weights", b"a.b-c_9", b"n" * 64])
    def test_valid_section_names(self, name: bytes):
        assert read(b"h: 1\n---BINARY_SECTION:" + name + b"---\n" + b64(b"x")).sections[0].name == name.decode()

    @pytest.mark.parametrize("name", [b"9a", b"a b", b"", b"-a", b"n" * 65, b"caf\xc3\xa9"])
    def test_invalid_section_names(self, name: bytes):
        assert codes_of(b"h: 1\n---BINARY_SECTION:" + name + b"---\n" + b64(b"x")) == ["AF0004"]


class TestHostileInput:
    @pytest.mark.parametrize("case", CONTAINER_CASES, ids=[c.stem for c in CONTAINER_CASES])
    def test_corpus_case_reports_its_code_with_a_position(self, case: Path):
        expected = case.with_suffix(".code").read_text().strip()
        with pytest.raises(ParseError) as info:
            read_container(case.read_bytes(), path=str(case))
        found = [d for d in info.value.diagnostics if d.code == expected]
        assert found, [d.code for d in info.value.diagnostics]
        assert found[0].span.path == str(case) and found[0].span.line >= 1 and found[0].span.column >= 1

    def test_every_fault_of_a_file_is_reported(self):
        data = (
            b"h: \xff\n---BINARY_SECTION:bad name---\n" + b64(b"x")
            + b"---BINARY_SECTION:w---\n[compressed binary data]\n"
            + b"---BINARY_SECTION:v---\n@@@@\n"
        )
        assert codes_of(data) == ["AF0001", "AF0004", "AF0007", "AF0008"]

    def test_duplicate_names_the_first_line(self):
        data = b"h: 1\n---BINARY_SECTION:w---\n" + b64(b"x") + b"---BINARY_SECTION:w---\n" + b64(b"y")
        with pytest.raises(ParseError) as info:
            read(data)
        (diagnostic,) = info.value.diagnostics
        assert diagnostic.code == "AF0005" and "line 2" in diagnostic.help

    def test_streamed_bomb_without_declared_size_is_capped(self):
        # 4 MiB of zeros compress to a few hundred bytes of ordinary compressed blocks.
        bomb = frame(b"\0" * (4 << 20), write_content_size=False)
        data = b"h: 1\n---BINARY_SECTION:w---\n" + bomb
        assert codes_of(data, max_section_bytes=1 << 20) == ["AF0016"]

    def test_declared_size_over_the_cap_is_refused_before_decoding(self):
        data = b"h: 1\n---BINARY_SECTION:w---\n" + base64.encodebytes(frame(b"\0" * 5000))
        assert codes_of(data, max_section_bytes=4999) == ["AF0016"]

    def test_section_at_the_cap_is_accepted(self):
        data = b"h: 1\n---BINARY_SECTION:w---\n" + frame(b"\0" * 5000, write_content_size=False)
        assert len(read(data, max_section_bytes=5000).sections[0].payload) == 5000

    def test_lying_declared_size_is_corrupt(self):
        real = frame(b"abcdef" * 100)
        # Rewrite the 2-byte content size field (stored minus 256) so the frame declares more than it holds.
        params = zstandard.get_frame_parameters(real)
        assert params.content_size == 600
        header_size = zstandard.frame_header_size(real)
        fcs_at = header_size - 2
        lying = real[:fcs_at] + (700 - 256).to_bytes(2, "little") + real[header_size:]
        assert zstandard.get_frame_parameters(lying).content_size == 700
        assert codes_of(b"h: 1\n---BINARY_SECTION:w---\n" + lying) == ["AF0012"]

    def test_garbage_after_raw_frame_then_next_section_still_read(self):
        data = b"h: 1\n---BINARY_SECTION:r---\n" + frame(b"a") + b"junk\n---BINARY_SECTION:w---\n@\n"
        assert codes_of(data) == ["AF0015", "AF0008"]

    def test_long_blank_section_is_empty(self):
        assert codes_of(b"h: 1\n---BINARY_SECTION:w---\n" + b"   \n" * 200) == ["AF0006"]

    def test_marker_line_without_newline_at_eof_is_empty(self):
        assert codes_of(b"h: 1\n---BINARY_SECTION:w---") == ["AF0006"]

    def test_base64_data_after_padding(self):
        text = next(t for n in range(1, 9) if (t := base64.b64encode(frame(b"a" * n))).endswith(b"="))
        data = b"h: 1\n---BINARY_SECTION:w---\n" + text + b"\n" + base64.b64encode(b"more") + b"\n"
        assert codes_of(data) == ["AF0009"]


    def test_raw_frame_faults_point_at_the_marker_with_the_byte_offset(self):
        raw_frame = frame(b"abc")
        data = b"h: 1\n---BINARY_SECTION:r---\n" + raw_frame[:-1] + bytes([raw_frame[-1] ^ 1])
        with pytest.raises(ParseError) as info:
            read(data)
        (diagnostic,) = info.value.diagnostics
        assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("AF0013", 2, 1)
        assert diagnostic.notes == ("at byte offset 28 of the file",)

    def test_endless_marker_line_is_malformed(self):
        data = b"h: 1\n---BINARY_SECTION:" + b"x" * 1_000_000 + b"---\n" + b64(b"x")
        assert codes_of(data) == ["AF0003"]

    def test_a_flood_of_faults_stops_at_the_cap(self):
        data = b"h: 1\n" + b"---BINARY_SECTION:w---\n" * 100_000
        with pytest.raises(ParseError) as info:
            read(data)
        diagnostics = info.value.diagnostics
        assert len(diagnostics) == MAX_DIAGNOSTICS + 1
        assert diagnostics[-1].code == "AF0019" and diagnostics[-1].severity == "note"

class TestBase64Decoding:
    """The one-pass path for writer-wrapped text and the strict path must agree on every input."""

    PAYLOAD = bytes(range(256)) * 40

    def text(self, newline: bytes = b"\n") -> bytes:
        return base64.encodebytes(frame(self.PAYLOAD)).replace(b"\n", newline)

    @pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
    def test_wrapped_text(self, newline: bytes):
        data = b"h: 1" + newline + b"---BINARY_SECTION:w---" + newline + self.text(newline)
        assert read(data).sections[0].payload == self.PAYLOAD

    def test_line_end_replaced_by_junk_is_reported(self):
        text = bytearray(self.text())
        text[76] = ord("@")
        assert codes_of(b"h: 1\n---BINARY_SECTION:w---\n" + bytes(text)) == ["AF0008"]

    def test_letter_replaced_by_newline_is_still_valid_whitespace_but_short(self):
        text = bytearray(self.text())
        text[10] = ord("\n")
        assert codes_of(b"h: 1\n---BINARY_SECTION:w---\n" + bytes(text)) == ["AF0009"]

    def test_padding_inside_the_text_is_reported(self):
        text = bytearray(self.text())
        text[20:24] = b"QQ=="
        assert codes_of(b"h: 1\n---BINARY_SECTION:w---\n" + bytes(text)) == ["AF0009"]

    def test_unwrapped_single_line(self):
        data = b"h: 1\n---BINARY_SECTION:w---\n" + base64.b64encode(frame(self.PAYLOAD)) + b"\n"
        assert read(data).sections[0].payload == self.PAYLOAD


class TestBase64Frame:
    """Random access into wrapped base64 text agrees with decoding it all with the base64 module."""

    @settings(max_examples=80, deadline=None)
    @given(st.binary(max_size=400), st.sampled_from(["\n", "\r\n"]), st.integers(0, 420), st.integers(0, 420))
    def test_slices_match_b64decode(self, data: bytes, newline: str, start: int, stop: int):
        text = encode_base64_lines(data, newline)
        view = _Base64Frame.of(memoryview(text))
        assert len(view) == len(data)
        assert view[start:stop] == data[start:stop]

    def test_streamed_section_never_holds_the_whole_frame(self):
        rng = np.random.default_rng(3)
        payload = rng.standard_normal(2_500_000).astype(np.float32).tobytes()  # 10 MB, barely compressible
        data = b"h: 1\n---BINARY_SECTION:w---\n" + encode_base64_lines(frame(payload))
        tracemalloc.start()
        try:
            container = read(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert container.sections[0].payload == payload
        # The payload plus a few MiB of pieces; decoding the frame first would add ~9 MB more.
        assert peak < len(payload) + 4_000_000


class TestManyBlockFrames:
    """Frames of more blocks than the reader walks in Python are decoded by zstd, with the same checks."""

    @staticmethod
    def many_block_frame(count: int) -> tuple[bytes, bytes]:
        compressor = zstandard.ZstdCompressor(write_checksum=True).compressobj()
        payload, parts = b"", []
        for i in range(count):
            chunk = i.to_bytes(4, "little")
            payload += chunk
            parts += [compressor.compress(chunk), compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)]
        parts.append(compressor.flush())
        return b"".join(parts), payload

    def test_frame_of_70000_blocks_then_next_section(self):
        many, payload = self.many_block_frame(70_000)
        data = b"h: 1\n---BINARY_SECTION:r---\n" + many + b"\n---BINARY_SECTION:w---\n" + b64(b"next")
        container = read(data)
        assert container.section("r").payload == payload
        assert container.section("w").payload == b"next"

    def test_cut_short(self):
        many, _ = self.many_block_frame(70_000)
        assert codes_of(b"h: 1\n---BINARY_SECTION:r---\n" + many[:-10]) == ["AF0011"]

    def test_bomb_behind_many_empty_blocks_is_capped(self):
        empty = (0).to_bytes(3, "little")
        rle = (1024 << 3 | 1 << 1).to_bytes(3, "little") + b"\0"  # 4 bytes in, 1 KiB out
        bomb = b"\x28\xb5\x2f\xfd\x04\x38" + empty * 70_000 + rle * 3000 + (1).to_bytes(3, "little") + b"\0" * 4
        assert codes_of(b"h: 1\n---BINARY_SECTION:r---\n" + bomb, max_section_bytes=1 << 20) == ["AF0016"]


class TestWhatTheFileHolds:
    """Issue 9, point 11: say what the file or section holds and what the format wants."""

    def test_cr_only_file_is_one_diagnostic_even_past_the_header_cap(self):
        data = (b"version: '1.0'\rname: x\r" + b"# padding\r" * 200_000)
        assert len(data) > MAX_HEADER_BYTES
        assert codes_of(data) == ["AF0020"]

    def test_cr_is_reported_where_it_is(self):
        with pytest.raises(ParseError) as info:
            read(b"a: 1\nb: 2\rc: 3\n")
        (diag,) = info.value.diagnostics
        assert (diag.span.line, diag.span.column) == (2, 5) and "lone CR" in diag.message

    def test_crlf_is_fine(self):
        assert read(b"a: 1\r\nb: 2\r\n").newline == "\r\n"

    @pytest.mark.parametrize("magic", [0x184D2A50, 0x184D2A57, 0x184D2A5F])
    def test_skippable_frame_in_a_raw_section(self, magic):
        skippable = magic.to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
        data = b"a: 1\n---BINARY_SECTION:s---\n" + skippable + frame(b"x") + b"\n"
        assert codes_of(data) == ["AF0021"]

    def test_later_sections_are_still_read(self):
        data = b"a: 1\n---BINARY_SECTION:s---\n\x1f\x8bjunk\n---BINARY_SECTION:t---\n" + b64(b"y")
        assert codes_of(data) == ["AF0022"]

    @pytest.mark.parametrize(("body", "code"), [(b"\xc3\xa9KLUv/WRk\n", "AF0008"), (b"\xff\xfeKLUv\n", "AF0022"),
                                               (b"\x00\x00\x01\x02\n", "AF0022"), (b"KLU*v/WRk\n", "AF0008")])
    def test_text_that_is_not_base64_is_not_called_binary(self, body, code):
        assert codes_of(b"a: 1\n---BINARY_SECTION:s---\n" + body) == [code]
