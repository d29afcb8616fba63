"""Regenerate the container-level cases of this corpus (`container-*.af`, `tensors-*.af`).

Run from the repository root: `.venv/bin/python tests/corpus/bad/make_container_cases.py`.
Each case is the valid `examples/xor.af` with one fault; its `.code` file holds the expected code.
The frames are built with plain zstandard/safetensors calls (and by hand where zstandard would
refuse to write them), so the cases do not depend on our writer being right.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import safetensors.numpy
import zstandard

from afc.reader import read_container
from afc.writer import encode_base64_lines

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
XOR = read_container((ROOT / "examples/xor.af").read_bytes(), path="examples/xor.af")
HEADER = XOR.header_text.encode()
WEIGHTS = XOR.section("neural_weights").payload
TRAINING = XOR.section("training_data").payload
MAGIC = b"\x28\xb5\x2f\xfd"


def marker(name: bytes) -> bytes:
    return b"---BINARY_SECTION:" + name + b"---\n"


def frame(payload: bytes, **options) -> bytes:
    options.setdefault("write_checksum", True)
    return zstandard.ZstdCompressor(level=3, **options).compress(payload)


def b64_section(name: bytes, payload_frame: bytes) -> bytes:
    return marker(name) + encode_base64_lines(payload_frame)


def raw_section(name: bytes, payload_frame: bytes) -> bytes:
    return marker(name) + payload_frame + b"\n"


def weights_file(weights_frame: bytes, *, raw: bool = False) -> bytes:
    section = raw_section if raw else b64_section
    return HEADER + section(b"neural_weights", weights_frame) + b64_section(b"training_data", frame(TRAINING))


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def handmade_frame(descriptor: bytes, blocks: bytes) -> bytes:
    """A frame with the given header bytes after the magic, the given blocks and a dummy checksum."""
    return MAGIC + descriptor + blocks + b"\0\0\0\0"


def rle_bomb() -> bytes:
    # 16385 RLE blocks of 128 KiB: 2 GiB + 128 KiB of output from 64 KiB of frame, no declared size.
    block = ((128 * 1024) << 3 | 1 << 1).to_bytes(3, "little") + b"\0"
    last = ((128 * 1024) << 3 | 1 << 1 | 1).to_bytes(3, "little") + b"\0"
    return handmade_frame(b"\x04\x38", block * 16384 + last)


def raw_block(data: bytes) -> bytes:
    return (len(data) << 3 | 1).to_bytes(3, "little") + data


def cases() -> dict[str, tuple[bytes, str]]:
    good_w, good_t = frame(WEIGHTS), frame(TRAINING)
    weights_text = encode_base64_lines(good_w)
    lines = weights_text.split(b"\n")
    nan_weights = {k: v.copy() for k, v in safetensors.numpy.load(WEIGHTS).items()}
    nan_weights["layers.0.weight"][1, 1] = np.nan
    int_weights = {k: (v * 100).astype(np.int32) for k, v in safetensors.numpy.load(WEIGHTS).items()}
    return {
        "container-non-utf8-header": (weights_file(good_w).replace(b"Two-input XOR", b"Two-input \xff XOR"), "AF0001"),
        "container-oversize-header": (HEADER + b"# padding padding padding padding padding\n" * 26000 + b64_section(b"neural_weights", good_w), "AF0002"),
        "container-malformed-marker": (HEADER + b"---BINARY_SECTION:neural_weights--- trailing\n" + weights_text, "AF0003"),
        "container-bad-section-name": (HEADER + marker(b"neural weights!") + weights_text, "AF0004"),
        "container-duplicate-section": (weights_file(good_w) + b64_section(b"neural_weights", good_w), "AF0005"),
        "container-empty-section": (HEADER + marker(b"neural_weights") + b64_section(b"training_data", good_t), "AF0006"),
        "container-seed-placeholder": (HEADER + marker(b"neural_weights") + b"[compressed binary data]\n", "AF0007"),
        "container-invalid-base64-char": (HEADER + marker(b"neural_weights") + lines[0] + b"\n" + lines[1][:10] + b"*" + lines[1][11:] + b"\n" + b"\n".join(lines[2:]), "AF0008"),
        "container-base64-truncated": (HEADER + marker(b"neural_weights") + weights_text.rstrip(b"\n")[:-3] + b"\n", "AF0009"),
        "container-not-zstd": (HEADER + marker(b"neural_weights") + encode_base64_lines(WEIGHTS), "AF0010"),
        "container-truncated-raw-zstd": (HEADER + marker(b"neural_weights") + good_w[: len(good_w) // 2], "AF0011"),
        "container-corrupt-zstd": (weights_file(handmade_frame(b"\x04\x38", b"\x07\x00\x00"), raw=True), "AF0012"),
        "container-checksum-mismatch": (weights_file(good_w[:-1] + bytes([good_w[-1] ^ 0xFF]), raw=True), "AF0013"),
        "container-no-checksum": (weights_file(frame(WEIGHTS, write_checksum=False)), "AF0014"),
        "container-trailing-frame-raw": (weights_file(good_w + frame(b"hidden"), raw=True), "AF0015"),
        "container-trailing-frame-base64": (weights_file(good_w + frame(b"hidden")), "AF0015"),
        "container-zstd-bomb": (weights_file(rle_bomb(), raw=True), "AF0016"),
        "container-window-too-large": (weights_file(handmade_frame(b"\x04\xa8", raw_block(b"abc")), raw=True), "AF0017"),
        "container-dictionary": (weights_file(handmade_frame(b"\x05\x38\x07", raw_block(b"abc")), raw=True), "AF0018"),
        "tensors-not-safetensors": (weights_file(frame(b"this is not a safetensors file")), "AF2101"),
        "tensors-bad-offsets": (weights_file(frame(safetensors_bytes({"layers.0.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 4096]}}, b"\0" * 32))), "AF2101"),
        "tensors-unknown-dtype": (weights_file(frame(safetensors_bytes({"layers.0.weight": {"dtype": "Q99", "shape": [4, 2], "data_offsets": [0, 32]}}, b"\0" * 32))), "AF2102"),
        "tensors-integer-dtype": (weights_file(frame(safetensors.numpy.save(int_weights))), "AF2102"),
        "tensors-nan-weights": (weights_file(frame(safetensors.numpy.save(nan_weights))), "AF2103"),
        # issue 9, point 11: say what the file or the section holds and what the format wants
        "container-cr-line-endings": (weights_file(good_w).replace(b"\n", b"\r"), "AF0020"),
        "container-bare-cr-in-header": (weights_file(good_w).replace(b"\nneural_config:", b"\rneural_config:"), "AF0020"),
        "container-skippable-frame-raw": (weights_file(skippable(0x184D2A50) + good_w, raw=True), "AF0021"),
        "container-skippable-frame-raw-5f": (weights_file(skippable(0x184D2A5F, b"metadata") + good_w, raw=True), "AF0021"),
        "container-skippable-frame-base64": (weights_file(skippable(0x184D2A53) + good_w), "AF0021"),
        "container-gzip-section": (HEADER + marker(b"neural_weights") + gzip.compress(WEIGHTS, mtime=0) + b"\n", "AF0022"),
        "container-binary-section": (HEADER + marker(b"neural_weights") + WEIGHTS + b"\n", "AF0022"),
        # Letta: files that are plainly not af agent files get one diagnostic naming their kind
        "not-af-letta": (json.dumps(LETTA, indent=2).encode(), "AF0023"),
        "not-af-letta-first-format": (json.dumps(LETTA_FIRST, indent=2).encode(), "AF0023"),
        "not-af-bundle": (compiled_xor()[0], "AF0023"),
        "not-af-onnx": (compiled_xor()[1], "AF0023"),
        "not-af-safetensors": (WEIGHTS, "AF0023"),
        "not-af-zstd": (frame(HEADER), "AF0023"),
        "not-af-json": (b'{"model": "resnet50", "classes": 1000}\n', "AF0023"),
        "not-af-gzip": (gzip.compress(HEADER, mtime=0), "AF0023"),
    }


def skippable(magic: int, data: bytes = b"") -> bytes:
    """A zstd skippable frame (RFC 8878 §3.1.2): magic 0x184D2A5?, a 4-byte size, then that many bytes."""
    return struct.pack("<II", magic, len(data)) + data


#: a Letta agent file (https://docs.letta.com, "AgentFile"), cut down: JSON with agents, blocks, tools...
LETTA = {
    "agents": [{"name": "memgpt_agent", "system": "You are a helpful assistant.", "agent_type": "memgpt_agent",
                "llm_config": {"model": "gpt-4o-mini", "context_window": 32000}, "block_ids": ["block-0"],
                "tool_ids": ["tool-0"], "messages": []}],
    "groups": [],
    "blocks": [{"id": "block-0", "label": "persona", "value": "I am a friendly agent.", "limit": 5000}],
    "files": [],
    "sources": [],
    "tools": [{"id": "tool-0", "name": "send_message", "source_code": "def send_message(message: str): ..."}],
    "mcp_servers": [],
    "metadata": {"revision_id": "0"},
}
#: Letta's first agent-file layout: one agent at the top level (it has `name` and `version` too)
LETTA_FIRST = {"agent_type": "memgpt_agent", "name": "agent", "version": "0.6.45", "core_memory": [],
               "llm_config": {"model": "gpt-4"}, "messages": [], "tools": [], "tool_rules": []}


def compiled_xor() -> tuple[bytes, bytes]:
    """The bundle of examples/xor.af and its ONNX model."""
    import afc
    from afc.compile import compile_agent, lower_agent

    spec = afc.load_agent_file(ROOT / "examples/xor.af").spec()
    return compile_agent(spec), lower_agent(spec, targets=["onnx"]).onnx


def main() -> None:
    for name, (data, code) in cases().items():
        (HERE / f"{name}.af").write_bytes(data)
        (HERE / f"{name}.code").write_text(code + "\n")
        print(f"{name}.af: {len(data)} bytes, expects {code}")


if __name__ == "__main__":
    main()
