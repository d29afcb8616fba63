"""afcore.protowire against protobuf's own serializer (the onnx package's generated classes)."""

from __future__ import annotations

import pytest
from onnx import TensorProto

from afcore.protowire import field_head, varint


@pytest.mark.parametrize("value, encoded", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                            (300, b"\xac\x02"), (2**32, b"\x80\x80\x80\x80\x10")])
def test_varint(value, encoded):
    assert varint(value) == encoded


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 70_000])
def test_field_head_is_what_protobuf_writes(size):
    # TensorProto.raw_data is field 9, length-delimited; a message holding only it is head + data
    data = TensorProto(raw_data=b"x" * size).SerializeToString()
    assert data == field_head(9, size) + b"x" * size
