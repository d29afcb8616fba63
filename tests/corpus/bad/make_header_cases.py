"""Rebuild the header-level cases of this corpus (`header-*.af` + `.code`): `python make_header_cases.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from afc.tensors import encode_tensors
from afc.writer import write_container

HERE = Path(__file__).parent

BASE = """\
version: "1.0"
name: "hostile"
neural_config:
  input_size: 2
  output_size: 1
  hidden_layers: [2]
  activation_function: "relu"
workflows:
  execution:
    - receive_input
    - process_neural_network
    - send_output
"""


def weights(sizes=(2, 2, 1)) -> bytes:
    tensors = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"layers.{i}.weight"] = np.full((fan_out, fan_in), 0.5, np.float32)
        tensors[f"layers.{i}.bias"] = np.zeros(fan_out, np.float32)
    return encode_tensors(tensors)


def alias_bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


CASES: dict[str, tuple[str, str, bytes | None]] = {
    "header-python-tag": ("AF0052", BASE.replace('name: "hostile"', 'name: !!python/object/apply:os.system ["echo pwned"]'), None),
    "header-local-tag": ("AF0052", BASE.replace("input_size: 2", "input_size: !int 2"), None),
    "header-alias-bomb": ("AF0053", BASE + alias_bomb(), None),
    "header-alias": ("AF0054", BASE.replace("output_size: 1", "output_size: *x").replace("input_size: 2", "input_size: &x 2"), None),
    "header-deep-nesting": ("AF0055", BASE + "runtime:\n  deep: " + "[" * 5000 + "]" * 5000 + "\n", None),
    "header-non-string-key": ("AF0056", BASE + "3.14: pi\n", None),
    "header-duplicate-key": ("AF0057", BASE + 'name: "again"\n', None),
    "header-yaml-directive": ("AF0059", "%TAG !p! tag:yaml.org,2002:python/\n---\n" + BASE, None),
    "header-two-documents": ("AF0058", BASE + "---\nname: second\n", None),
    "header-bidi-in-name": ("AF0060", BASE.replace('"hostile"', '"admin\u202e\u2066txt.exe"'), None),
    "header-control-char-in-key": ("AF0060", BASE.replace("  input_size:", '  "input\\u0000_size":'), None),
    "header-yaml-syntax": ("AF0050", BASE.replace("[2]", "[2"), None),
    "header-empty": ("AF0051", "# nothing here\n", None),
    "header-step-syntax": ("AF0070", BASE.replace("- send_output", "- send_output when output.max >> 1"), None),
    "header-step-eval-attempt": ("AF0070", BASE.replace("- send_output", "- \"send_output when __import__('os')\""), None),
    "header-schema-unknown-key": ("AF1003", BASE.replace("activation_function", "activation_fn"), None),
    "header-schema-huge-layer": ("AF1005", BASE.replace("[2]", "[100000000000]"), None),
    "header-unknown-step": ("AF2020", BASE.replace("- receive_input", "- recieve_input"), None),
    "header-weights-shape": ("AF2004", BASE.replace("[2]", "[3]"), None),
    "header-requirements-over-limits": ("AF2010", BASE + "resources:\n  limits:\n    cpu_cores: 1\n  requirements:\n    minimum_cpu_cores: 4\n", None),
    # issue 9, point 5: non-finite numbers passed validation and crashed the manifest encoder
    "header-learning-rate-nan": ("AF1010", BASE.replace('"relu"\n', '"relu"\n  learning_rate: .nan\n'), None),
    "header-memory-inf": ("AF1010", BASE + "resources:\n  limits:\n    memory_mb: .inf\n", None),
    "header-cpu-cores-nan": ("AF1010", BASE + "resources:\n  limits:\n    cpu_cores: .NaN\n", None),
    "header-disk-1e999": ("AF1010", BASE + "resources:\n  limits:\n    disk_mb: 1e999\n", None),
    "header-bandwidth-minus-inf": ("AF1010", BASE + "resources:\n  limits:\n    network_bandwidth_mbps: -.inf\n", None),
    "header-requirement-nan": ("AF1010", BASE + "resources:\n  requirements:\n    minimum_memory_mb: .nan\n", None),
    "header-requirement-inf": ("AF1010", BASE + "resources:\n  requirements:\n    minimum_cpu_cores: .inf\n", None),
    "header-runtime-nan": ("AF1010", BASE + "runtime:\n  weight_decay: .nan\n", None),
    "header-memory-5000-digits": ("AF1010", BASE + "resources:\n  limits:\n    memory_mb: 1" + "0" * 5000 + "\n", None),
    # point 7: cpu_cores of 2**31 or more crashed onnxruntime's session setup
    "header-cpu-cores-2pow31": ("AF1005", BASE + "resources:\n  limits:\n    cpu_cores: 2147483648\n", None),
    "header-cpu-cores-1e300": ("AF1005", BASE + "resources:\n  limits:\n    cpu_cores: 1e300\n", None),
    "header-cpu-cores-5000": ("AF1005", BASE + "resources:\n  limits:\n    cpu_cores: 5000\n", None),
    "header-memory-400-digits": ("AF1005", BASE + "resources:\n  limits:\n    memory_mb: 1" + "0" * 400 + "\n", None),
    "header-min-cpu-huge": ("AF1005", BASE + "resources:\n  requirements:\n    minimum_cpu_cores: 4294967296\n", None),
    # points 5, 6, 8: guards and arguments whose fault the file alone decides
    "step-guard-inf-literal": ("AF0074", BASE.replace("- send_output", "- send_output when output.max > 1e999"), None),
    "step-guard-huge-integer": ("AF0074", BASE.replace("- send_output", "- send_output when output.max > 1" + "0" * 400), None),
    "step-argument-inf": ("AF0074", BASE.replace("- send_output", "- save_state(every=1e999)"), None),
    "step-argument-minus-inf": ("AF0074", BASE.replace("- send_output", "- update_memory(window=-1e400)"), None),
    "step-guard-sum-490": ("AF0075", BASE.replace("- send_output", "- send_output when output.max > " + "+".join(["1"] * 490)), None),
    "step-guard-500-minus": ("AF0075", BASE.replace("- send_output", "- send_output when output.max > " + "-" * 500 + "1"), None),
    "step-guard-300-not": ("AF0075", BASE.replace("- send_output", "- send_output when " + "not " * 240 + "output.max"), None),
    "step-guard-and-chain": ("AF0075", BASE.replace("- send_output", "- send_output when " + " and ".join(["input.a>0"] * 66)), None),
    "step-guard-overflow-product": ("AF0076", BASE.replace("- send_output", "- send_output when output.max > 1.5 * 1e300 * 1e300"), None),
    "step-guard-overflow-sum": ("AF0076", BASE.replace("- send_output", "- send_output when output.max + (1e308 + 1e308) > 0"), None),
    "step-guard-overflow-integers": ("AF0076", BASE.replace("- send_output", "- send_output when memory.count > " + " * ".join(["9007199254740992"] * 20)), None),
    "step-guard-division-by-zero": ("AF0077", BASE.replace("- send_output", "- send_output when output.max / 0 > 1"), None),
    "step-guard-modulo-zero-expression": ("AF0077", BASE.replace("- send_output", "- send_output when memory.count % (3 - 3) == 0"), None),
    "step-guard-string-bomb": ("AF0079", BASE.replace("- send_output", "- 'send_output when input.tag == \"ab\" * 9007199254740992'"), None),
    "step-argument-lone-surrogate": ("AF0078", BASE.replace("- send_output", "- 'send_output(topic=\"\\ud800\")'"), None),
    "step-argument-lone-low-surrogate": ("AF0078", BASE.replace("- send_output", "- 'send_output(topic=\"x\\udfff\")'"), None),
    "step-guard-lone-surrogate": ("AF0078", BASE.replace("- send_output", "- 'send_output when input.tag == \"\\udbff\"'"), None),
    # lone surrogates elsewhere in the header: libyaml refuses the escape
    "header-surrogate-in-description": ("AF0050", BASE + 'description: "a \\ud800 b"\n', None),
    "header-surrogate-in-runtime": ("AF0050", BASE + 'runtime:\n  note: "\\udc00"\n', None),
    "header-surrogate-32-bit-escape": ("AF0050", BASE + 'author: "\\U0000d800"\n', None),
}


def main() -> None:
    for name, (code, header, payload) in CASES.items():
        data = write_container(header, [("neural_weights", payload or weights())])
        (HERE / f"{name}.af").write_bytes(data)
        (HERE / f"{name}.code").write_text(code + "\n")


if __name__ == "__main__":
    main()
