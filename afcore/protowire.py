"""The few bytes of protobuf's wire format that af writes by hand (docs/bundle.md).

The compiler splices weights into a serialized ONNX model without copying them into protobuf
(`afc.lower_onnx`), and the runtime rewrites a model without its large initializers for the safety
check (`afrt._onnxproto`). Both write the key and length of a length-delimited field around bytes
they did not serialize; this is that encoding, in one place.
"""

from __future__ import annotations

__all__ = ["LENGTH_DELIMITED", "field_head", "varint"]

#: the wire type of length-delimited fields (messages, bytes, strings)
LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """Return ``value`` (non-negative) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_head(number: int, payload_size: int) -> bytes:
    """Return the key and length of length-delimited field ``number`` holding ``payload_size`` bytes."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(payload_size)
