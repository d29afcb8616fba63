"""An .af file built by hand from the spec (plain base64, zstandard and safetensors calls), read by our reader.

Nothing here uses afc.writer: the spec, not only our own writer, is what is tested.
"""

from __future__ import annotations

import base64

import numpy as np
import safetensors.numpy
import zstandard

from afc.reader import read_container
from afc.tensors import decode_tensors

HEADER = """\
# Agent File Format v1.0
version: "1.0"
name: "handmade"
neural_config:
  network_type: "feedforward"
  input_size: 3
  output_size: 2
  hidden_layers: [4]
  activation_function: "relu"
"""


def zstd_frame(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=9, write_checksum=True).compress(payload)


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "layers.0.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(4).astype(np.float32),
        "layers.1.weight": rng.standard_normal((2, 4)).astype(np.float32),
        "layers.1.bias": rng.standard_normal(2).astype(np.float32),
    }


def training() -> dict[str, np.ndarray]:
    return {"inputs": np.eye(3, dtype=np.float32), "targets": np.ones((3, 2), np.float32)}


class TestHandmadeFile:
    def test_base64_weights_and_raw_training_data(self):
        weights = tensors()
        data = (
            HEADER.encode()
            + b"---BINARY_SECTION:neural_weights---\n"
            + base64.encodebytes(zstd_frame(safetensors.numpy.save(weights)))
            + b"---BINARY_SECTION:training_data---\n"
            + zstd_frame(safetensors.numpy.save(training()))
            + b"\n"
            + b"---BINARY_SECTION:notes---\n"
            + base64.encodebytes(zstd_frame(b"opaque bytes"))
        )
        container = read_container(data, path="handmade.af")
        assert container.header_text == HEADER
        assert [(s.name, s.encoding) for s in container.sections] == [
            ("neural_weights", "base64"),
            ("training_data", "raw"),
            ("notes", "base64"),
        ]
        decoded, diagnostics = decode_tensors(container.section("neural_weights"))
        assert diagnostics == []
        assert decoded.keys() == weights.keys()
        assert all(np.array_equal(decoded[k], weights[k]) for k in weights)
        assert np.array_equal(decode_tensors(container.section("training_data"))[0]["targets"], np.ones((3, 2)))
        assert container.section("notes").payload == b"opaque bytes"

    def test_crlf_bom_and_64_column_base64(self):
        weights = tensors()
        text = base64.b64encode(zstd_frame(safetensors.numpy.save(weights)))
        wrapped = b"".join(text[i : i + 64] + b"\r\n" for i in range(0, len(text), 64))
        data = b"\xef\xbb\xbf" + HEADER.replace("\n", "\r\n").encode() + b"---BINARY_SECTION:neural_weights---\r\n" + wrapped
        container = read_container(data, path="handmade.af")
        assert container.bom and container.newline == "\r\n"
        assert container.header_text == HEADER.replace("\n", "\r\n")
        decoded, _ = decode_tensors(container.sections[0])
        assert all(np.array_equal(decoded[k], weights[k]) for k in weights)
