"""Large networks: validation says how big they are, and the memory of validating and running them stays near the
weights' size (issue 9, point 13)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import zstandard

from afc.writer import MARKER_PREFIX, encode_base64_lines

ROOT = Path(__file__).resolve().parents[2]
#: 8192 x 8192 float32 weights plus 8192 biases: 256 MiB of zeros in a file of a few KB
SIDE = 8192
HEADER = f"""\
version: "1.0"
name: big
neural_config:
  input_size: {SIDE}
  output_size: {SIDE}
  hidden_layers: []
  activation_function: relu
  output_activation: linear
workflows:
  execution:
    - receive_input
    - process_neural_network
    - send_output
"""

MEASURE = """
import resource, sys
import afc
afc.validate(sys.argv[2])  # warm up: imports, schema, parser
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
codes = [d.code for d in afc.validate(sys.argv[1])]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(codes, (peak - base) * 1024)
"""


#: the same agent, whose network is loaded and runs: what `af run` needs
RUNNABLE_HEADER = HEADER.replace("workflows:\n", "workflows:\n  initialization:\n    - load_neural_network\n"
                                 "    - connect_to_swarm\n")
#: what `af run` may take besides the weights: the interpreter, numpy, onnxruntime and their libraries
FIXED_BYTES = 150 << 20


def write_zero_network(path: Path, yaml_header: str = HEADER) -> int:
    """Write the file without ever holding its 256 MiB payload; return the weights' size in bytes."""
    weight, bias = SIDE * SIDE * 4, SIDE * 4
    header = json.dumps({"layers.0.bias": {"dtype": "F32", "shape": [SIDE], "data_offsets": [0, bias]},
                         "layers.0.weight": {"dtype": "F32", "shape": [SIDE, SIDE],
                                             "data_offsets": [bias, bias + weight]}}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    head = struct.pack("<Q", len(header)) + header
    total = len(head) + bias + weight
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    chunks = compressor.compressobj(size=total)
    frame = [chunks.compress(head)]
    zeros = bytes(1 << 20)
    left = bias + weight
    while left:
        frame.append(chunks.compress(zeros[: min(left, len(zeros))]))
        left -= min(left, len(zeros))
    frame.append(chunks.flush())
    path.write_bytes(yaml_header.encode() + MARKER_PREFIX + b"neural_weights---\n" + encode_base64_lines(b"".join(frame)))
    return bias + weight


def test_validation_notes_the_size_and_stays_near_it_in_memory(tmp_path: Path):
    path = tmp_path / "big.af"
    weights = write_zero_network(path)
    assert path.stat().st_size < 100_000
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(ROOT / "examples" / "xor.af")],
                         capture_output=True, text=True, check=True).stdout.split("] ")
    assert out[0] == "['AF2011'"
    grown = int(out[1])
    # The payload itself (1x) plus small change; reading it in pieces and joining them took 2x.
    assert grown < 1.3 * weights, f"validation grew by {grown / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB of weights"


def peak_rss(args: list[str], **options) -> int:
    """Run a command; return the peak resident memory of that process alone, in bytes (its ru_maxrss)."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, process.stderr.read().decode()
    process.stderr.close()
    return usage.ru_maxrss * 1024


def test_af_run_of_a_bundle_stays_near_twice_the_weights(tmp_path: Path):
    # The bundle holds the weights three times (model.onnx, model.wasm, weights.safetensors); af run
    # kept them all, and the check's protobuf and onnxruntime copied model.onnx twice more: 5.2x.
    # Now it keeps model.onnx alone, in a file onnxruntime reads itself: onnxruntime's 2x.
    source, bundle, records = tmp_path / "big.af", tmp_path / "big.afb", tmp_path / "in.jsonl"
    weights = write_zero_network(source, RUNNABLE_HEADER)
    af = [sys.executable, "-m", "af"]
    subprocess.run([*af, "compile", str(source), "-o", str(bundle)], check=True, capture_output=True)
    records.write_text(json.dumps([1.0] * SIDE) + "\n")
    output = tmp_path / "out.jsonl"
    temp = tmp_path / "tmp"
    temp.mkdir()
    peak = peak_rss([*af, "run", str(bundle), "-i", str(records), "-o", str(output)],
                    env={**os.environ, "TMPDIR": str(temp)})
    assert json.loads(output.read_text())["output"] == [0.0] * SIDE  # zero weights, zero biases
    assert peak < 2.2 * weights + FIXED_BYTES, f"af run peaked at {peak / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB"
    assert not list(temp.glob("af-*"))  # the model's temporary file is gone
