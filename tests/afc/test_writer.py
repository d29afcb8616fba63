"""afc.writer: the exact bytes of the container, checked with base64, zstandard and our reader."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
import zstandard

from afc.reader import read_container
from afc.writer import BASE64_LINE_LENGTH, compress_payload, encode_base64_lines, write_af_file, write_container
from afcore.errors import UsageError


class TestFrames:
    def test_frame_has_checksum_and_size_and_decodes(self):
        frame = compress_payload(b"weights" * 1000)
        params = zstandard.get_frame_parameters(frame)
        assert params.has_checksum and params.content_size == 7000 and params.dict_id == 0
        assert zstandard.ZstdDecompressor().decompress(frame) == b"weights" * 1000

    def test_same_payload_same_frame(self):
        assert compress_payload(bytes(range(256)) * 99) == compress_payload(bytes(range(256)) * 99)


class TestBase64Lines:
    @pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 114, 1000])
    def test_lf_lines_match_encodebytes(self, size: int):
        data = bytes(range(256)) * 4
        assert encode_base64_lines(data[:size]) == base64.encodebytes(data[:size])

    def test_crlf_lines(self):
        text = encode_base64_lines(b"x" * 200, "\r\n")
        lines = text.split(b"\r\n")
        assert lines[-1] == b"" and all(len(line) == BASE64_LINE_LENGTH for line in lines[:-2])
        assert base64.b64decode(b"".join(lines)) == b"x" * 200


class TestWriteContainer:
    def test_base64_layout(self):
        data = write_container("a: 1\n", [("w", b"payload")])
        frame = compress_payload(b"payload")
        assert data == b"a: 1\n---BINARY_SECTION:w---\n" + base64.encodebytes(frame)

    def test_raw_layout_crlf_and_bom(self):
        data = write_container("a: 1\r\n", [("w", b"p")], raw=True, newline="\r\n", bom=True)
        assert data == b"\xef\xbb\xbfa: 1\r\n---BINARY_SECTION:w---\r\n" + compress_payload(b"p") + b"\r\n"

    def test_raw_for_named_sections_only(self):
        container = read_container(write_container("a: 1\n", [("w", b"1"), ("t", b"2")], raw={"t"}), path="x.af")
        assert [(s.name, s.encoding) for s in container.sections] == [("w", "base64"), ("t", "raw")]

    def test_missing_final_newline_of_header_is_added(self):
        assert write_container("a: 1", [("w", b"")]).startswith(b"a: 1\n---BINARY_SECTION:w---\n")

    def test_header_alone_is_written_as_given(self):
        assert write_container("a: 1", []) == b"a: 1"

    def test_read_then_write_is_byte_identical(self):
        original = write_container("# c\r\na: 1\r\n", [("w", b"x" * 300), ("t", b"")], raw={"t"}, newline="\r\n")
        c = read_container(original, path="x.af")
        again = write_container(
            c.header_text,
            [(s.name, s.payload) for s in c.sections],
            raw={s.name for s in c.sections if s.encoding == "raw"},
            newline=c.newline,
            bom=c.bom,
        )
        assert again == original

    @pytest.mark.parametrize(
        "sections, newline",
        [([("bad name", b"")], "\n"), ([("w", b""), ("w", b"")], "\n"), ([("w", b"")], "\r")],
        ids=["bad-name", "duplicate", "bad-newline"],
    )
    def test_bad_arguments(self, sections, newline):
        with pytest.raises(UsageError):
            write_container("a: 1\n", sections, newline=newline)


class TestWriteAfFile:
    def test_creates_and_replaces(self, tmp_path: Path):
        target = tmp_path / "agent.af"
        write_af_file(target, b"one", code="AF0914")
        write_af_file(target, b"two", code="AF0914")
        assert target.read_bytes() == b"two"
        assert os.listdir(tmp_path) == ["agent.af"]

    def test_keeps_permission_bits(self, tmp_path: Path):
        target = tmp_path / "agent.af"
        target.write_bytes(b"old")
        target.chmod(0o640)
        write_af_file(target, b"new", code="AF0914")
        assert stat.S_IMODE(target.stat().st_mode) == 0o640

    def test_failure_leaves_old_file_and_no_temporary(self, tmp_path: Path):
        target = tmp_path / "agent.af"
        target.write_bytes(b"old")
        with pytest.raises(TypeError):
            write_af_file(target, "not bytes", code="AF0914")  # type: ignore[arg-type]
        assert target.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["agent.af"]

    def test_an_unwritable_place_is_the_commands_usage_error(self, tmp_path: Path):
        with pytest.raises(UsageError) as info:
            write_af_file(tmp_path / "missing" / "agent.af", b"x", code="AF6031")
        assert info.value.code == "AF6031" and "missing" in info.value.message and info.value.hint
