"""afc.tensors: safetensors payloads to float32 arrays, checked against numpy and the safetensors library."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from afc.reader import RawSection
from afc.tensors import decode_tensors, encode_tensors
from afcore.errors import UsageError
from afcore.spans import Span

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "bad"
SPAN = Span("agent.af", 60, 1)


def section(payload: bytes, name: str = "neural_weights") -> RawSection:
    return RawSection(name, "base64", payload, SPAN, 0)


def raw_safetensors(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


class TestDecode:
    def test_f32_tensors_are_exact(self):
        rng = np.random.default_rng(1)
        original = {"layers.0.weight": rng.standard_normal((4, 3)).astype(np.float32), "layers.0.bias": np.zeros(4, np.float32)}
        tensors, diagnostics = decode_tensors(section(safetensors.numpy.save(original)))
        assert diagnostics == []
        assert sorted(tensors) == ["layers.0.bias", "layers.0.weight"]
        for name, array in original.items():
            assert tensors[name].dtype == np.float32 and tensors[name].shape == array.shape
            assert np.array_equal(tensors[name], array)

    def test_f16_is_widened_with_a_note(self):
        half = np.array([[0.5, -2.0], [65504.0, 1e-4]], dtype=np.float16)
        tensors, diagnostics = decode_tensors(section(safetensors.numpy.save({"w": half})))
        assert tensors["w"].dtype == np.float32
        assert np.array_equal(tensors["w"], half.astype(np.float64).astype(np.float32))
        assert [(d.code, d.severity) for d in diagnostics] == [("AF2104", "note")]

    def test_bf16_is_widened_by_the_bit_rule(self):
        bits = np.array([0x3F80, 0xC000, 0x3EAA, 0x0001], dtype="<u2")  # 1.0, -2.0, ~0.332, a subnormal
        payload = raw_safetensors({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, bits.tobytes())
        tensors, diagnostics = decode_tensors(section(payload))
        # Independent reference: a bfloat16 is the top half of a float32.
        expected = (bits.astype(np.uint32) << 16).view(np.float32)
        assert np.array_equal(tensors["w"], expected)
        assert [d.code for d in diagnostics] == ["AF2104"]

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_values_are_a_warning_with_the_first_index(self, bad: float):
        array = np.ones((3, 2), np.float32)
        array[2, 1] = bad
        tensors, diagnostics = decode_tensors(section(safetensors.numpy.save({"w": array})))
        (diagnostic,) = diagnostics
        assert (diagnostic.code, diagnostic.severity) == ("AF2103", "warning")
        assert "[2, 1]" in diagnostic.message and diagnostic.span == SPAN
        assert "w" in tensors

    @pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.bool_])
    def test_other_dtypes_are_errors(self, dtype):
        tensors, diagnostics = decode_tensors(section(safetensors.numpy.save({"w": np.zeros(3, dtype)})))
        assert tensors == {}
        assert [(d.code, d.severity) for d in diagnostics] == [("AF2102", "error")]

    @pytest.mark.parametrize(
        "payload",
        [
            b"",
            b"\x01\x02\x03",
            struct.pack("<Q", 10**12) + b"{}",
            struct.pack("<Q", 3) + b"abc",
            raw_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8),
            raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),
            raw_safetensors({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
        ],
        ids=["empty", "short", "huge-header", "not-json", "offset-past-end", "uncovered-bytes", "negative-shape"],
    )
    def test_broken_safetensors_is_one_error(self, payload: bytes):
        tensors, diagnostics = decode_tensors(section(payload))
        assert tensors == {}
        assert [(d.code, d.severity) for d in diagnostics] == [("AF2101", "error")]
        assert diagnostics[0].span == SPAN and "neural_weights" in diagnostics[0].message

    def test_unknown_dtype_name(self):
        payload = raw_safetensors({"w": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
        assert [d.code for d in decode_tensors(section(payload))[1]] == ["AF2102"]

    def test_metadata_is_not_a_tensor(self):
        payload = safetensors.numpy.save({"w": np.ones(2, np.float32)}, metadata={"note": "x"})
        assert list(decode_tensors(section(payload))[0]) == ["w"]


def raw_text_safetensors(text: str, data: bytes) -> bytes:
    encoded = text.encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
#: payloads where `_views` must agree with the library: same tensors, or None where the library refuses
AGREEMENT_CASES = {
    "plain": safetensors.numpy.save({"b": np.arange(3, dtype=np.float32), "a": np.eye(2, dtype=np.float32)}),
    "metadata": safetensors.numpy.save({"w": np.ones(2, np.float32)}, metadata={"k": "v"}),
    "f16+bf16": raw_safetensors({"h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                                 "b": {"dtype": "BF16", "shape": [1], "data_offsets": [4, 6]}}, b"\x01" * 6),
    "listed-out-of-offset-order": raw_safetensors({"z": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                                   "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                                                  b"\x02" * 8),
    "zero-size": raw_safetensors({"e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}, "w": F32_2},
                                 b"\0" * 8),
    "padded-header": raw_text_safetensors(json.dumps({"w": F32_2}) + "    ", b"\0" * 8),
    "repeated-key": raw_text_safetensors('{"w": %s, "w": %s}' % (json.dumps(F32_2), json.dumps(F32_2)), b"\0" * 8),
    "nan-metadata": raw_text_safetensors('{"__metadata__": {"k": NaN}, "w": %s}' % json.dumps(F32_2), b"\0" * 8),
    "lone-surrogate": raw_text_safetensors('{"\\ud800": %s}' % json.dumps(F32_2), b"\0" * 8),
    "overflowing-shape": raw_safetensors({"w": {"dtype": "F32", "shape": [2**63, 4, 0], "data_offsets": [0, 0]}}, b""),
    "gap": raw_safetensors({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
    "overlap": raw_safetensors({"v": F32_2, "w": F32_2}, b"\0" * 8),
    "size-mismatch": raw_safetensors({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
    "extra-field": raw_safetensors({"w": {**F32_2, "x": 1}}, b"\0" * 8),
    "leading-space": raw_text_safetensors(" " + json.dumps({"w": F32_2}), b"\0" * 8),
    "float64": safetensors.numpy.save({"w": np.ones(2)}),
    "not-an-object": raw_text_safetensors("[1, 2]", b""),
}


class TestViews:
    """`_views` (tensors read in place) against the safetensors library's own reader."""

    @pytest.mark.parametrize("payload", list(AGREEMENT_CASES.values()), ids=list(AGREEMENT_CASES))
    def test_agrees_with_the_library_or_defers(self, payload: bytes):
        from afc.tensors import _views

        views = _views(payload)
        try:
            reference = safetensors.deserialize(payload)
        except safetensors.SafetensorError:
            assert views is None
            return
        if views is not None:
            def normal(entries):
                return sorted((n, e["dtype"], list(e["shape"]), bytes(e["data"])) for n, e in entries)

            assert normal(views) == normal(reference)

    def test_plain_files_are_read_in_place(self):
        from afc.tensors import _views

        payload = AGREEMENT_CASES["plain"]
        assert _views(payload) is not None
        tensors, _ = decode_tensors(section(payload))
        base = np.frombuffer(payload, np.uint8)
        assert all(np.shares_memory(array, base) and not array.flags.writeable for array in tensors.values())

    def test_finite_check_in_slices(self, monkeypatch):
        import afc.tensors

        monkeypatch.setattr(afc.tensors, "_FINITE_CHUNK", 4)
        array = np.ones(11, np.float32)
        array[9] = np.nan
        _, diagnostics = decode_tensors(section(safetensors.numpy.save({"w": array})))
        assert [d.code for d in diagnostics] == ["AF2103"] and "[9]" in diagnostics[0].message


class TestEncode:
    def test_matches_the_library_reader(self):
        tensors = {"b": np.arange(3, dtype=np.float32), "a": np.eye(2, dtype=np.float32)}
        loaded = safetensors.numpy.load(encode_tensors(tensors))
        assert set(loaded) == {"a", "b"}
        assert all(np.array_equal(loaded[k], v) for k, v in tensors.items())

    def test_deterministic_whatever_the_insertion_order(self):
        a, b = np.ones((2, 2), np.float32), np.zeros(5, np.float32)
        assert encode_tensors({"a": a, "b": b}) == encode_tensors({"b": b, "a": a})

    def test_non_contiguous_and_big_endian_arrays(self):
        view = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
        loaded = safetensors.numpy.load(encode_tensors({"v": view}))
        assert np.array_equal(loaded["v"], view.astype(np.float32))

    def test_object_arrays_are_refused(self):
        with pytest.raises(UsageError):
            encode_tensors({"o": np.array([object()], dtype=object)})
