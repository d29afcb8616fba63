"""Bundles built by hand for the runtime tests, independent of the compiler.

The ONNX models are built with ``onnx.helper``; the wasm modules are written here in WAT (plain
scalar loops, weights in a data segment) to implement ABI v1 the simplest way, so that the
runtime is tested against the ABI, not against our own compiler's output.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import onnx
import wasmtime
from onnx import TensorProto, helper, numpy_helper

from afcore.bundle import Bundle, write_bundle

#: weights of a small network: list of (W [out, in] float32, b [out] float32)
Weights = list[tuple[np.ndarray, np.ndarray]]


def random_weights(sizes: Sequence[int], *, seed: int = 0) -> Weights:
    """He-scaled random float32 weights for ``sizes`` = [input, hidden..., output]."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((o, i)) * np.sqrt(2.0 / i)).astype(np.float32),
            (rng.standard_normal(o) * 0.1).astype(np.float32),
        )
        for i, o in zip(sizes[:-1], sizes[1:])
    ]


def reference_forward(weights: Weights, x: np.ndarray) -> np.ndarray:
    """The float64 numpy forward pass: relu on hidden layers, linear output."""
    h = np.asarray(x, dtype=np.float64)
    for k, (w, b) in enumerate(weights):
        h = h @ w.astype(np.float64).T + b.astype(np.float64)
        if k < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return h


def onnx_model(weights: Weights, *, opset: int = 17) -> onnx.ModelProto:
    """An ONNX MLP (Gemm + Relu) with input `input` and output `output`, dynamic batch."""
    nodes, inits, prev = [], [], "input"
    for k, (w, b) in enumerate(weights):
        last = k == len(weights) - 1
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        gemm_out = "output" if last else f"g{k}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{k}", f"b{k}"], [gemm_out], transB=1, name=f"gemm{k}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"h{k}"], name=f"relu{k}"))
            prev = f"h{k}"
    n_in, n_out = weights[0][0].shape[1], weights[-1][0].shape[0]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_in])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _data(offset: int, raw: bytes) -> str:
    escaped = "".join("\\%02x" % b for b in raw)
    return f'(data (i32.const {offset}) "{escaped}")'


def _layer_func(k: int, n_in: int, n_out: int, w_off: int, b_off: int, relu: bool) -> str:
    act = "(local.set $acc (f32.max (local.get $acc) (f32.const 0)))" if relu else ""
    return f"""
 (func $layer{k} (param $x i32) (param $y i32)
  (local $o i32) (local $i i32) (local $acc f32) (local $w i32)
  (local.set $o (i32.const 0))
  (loop $lo
   (local.set $acc (f32.load (i32.add (i32.const {b_off}) (i32.shl (local.get $o) (i32.const 2)))))
   (local.set $w (i32.add (i32.const {w_off}) (i32.mul (local.get $o) (i32.const {n_in * 4}))))
   (local.set $i (i32.const 0))
   (loop $li
    (local.set $acc (f32.add (local.get $acc)
     (f32.mul (f32.load (i32.add (local.get $w) (i32.shl (local.get $i) (i32.const 2))))
              (f32.load (i32.add (local.get $x) (i32.shl (local.get $i) (i32.const 2)))))))
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br_if $li (i32.lt_u (local.get $i) (i32.const {n_in}))))
   {act}
   (f32.store (i32.add (local.get $y) (i32.shl (local.get $o) (i32.const 2))) (local.get $acc))
   (local.set $o (i32.add (local.get $o) (i32.const 1)))
   (br_if $lo (i32.lt_u (local.get $o) (i32.const {n_out})))))"""


def wasm_module(weights: Weights, *, max_batch: int = 8, extra_pages: int = 0) -> bytes:
    """An ABI v1 module computing the MLP with scalar loops; weights in one data segment."""
    sizes = [weights[0][0].shape[1]] + [w.shape[0] for w, _ in weights]
    widest = max(sizes)
    input_ptr = 1024
    output_ptr = input_ptr + max_batch * sizes[0] * 4
    scratch = [output_ptr + max_batch * sizes[-1] * 4]
    scratch.append(scratch[0] + widest * 4)
    offset = scratch[1] + widest * 4
    funcs, datas, calls = [], [], []
    for k, (w, b) in enumerate(weights):
        n_out, n_in = w.shape
        w_off, b_off = offset, offset + w.size * 4
        offset = b_off + b.size * 4
        datas.append(_data(w_off, w.astype("<f4").tobytes()) + _data(b_off, b.astype("<f4").tobytes()))
        funcs.append(_layer_func(k, n_in, n_out, w_off, b_off, relu=k < len(weights) - 1))
        src = "(local.get $x)" if k == 0 else f"(i32.const {scratch[(k - 1) % 2]})"
        dst = "(local.get $y)" if k == len(weights) - 1 else f"(i32.const {scratch[k % 2]})"
        calls.append(f"(call $layer{k} {src} {dst})")
    pages = offset // 65536 + 1 + extra_pages
    wat = f"""(module
 (memory (export "memory") {pages})
 {"".join(datas)}
 {"".join(funcs)}
 (func (export "input_ptr") (result i32) (i32.const {input_ptr}))
 (func (export "output_ptr") (result i32) (i32.const {output_ptr}))
 (func (export "max_batch") (result i32) (i32.const {max_batch}))
 (func (export "infer") (param $n i32) (result i32) (local $r i32) (local $x i32) (local $y i32)
  (if (i32.or (i32.lt_s (local.get $n) (i32.const 1)) (i32.gt_s (local.get $n) (i32.const {max_batch})))
   (then (return (i32.const 1))))
  (loop $rec
   (local.set $x (i32.add (i32.const {input_ptr}) (i32.mul (local.get $r) (i32.const {sizes[0] * 4}))))
   (local.set $y (i32.add (i32.const {output_ptr}) (i32.mul (local.get $r) (i32.const {sizes[-1] * 4}))))
   {" ".join(calls)}
   (local.set $r (i32.add (local.get $r) (i32.const 1)))
   (br_if $rec (i32.lt_u (local.get $r) (local.get $n))))
  (i32.const 0)))"""
    return wasmtime.wat2wasm(wat)


def abi_module(body: str, *, n_in: int, n_out: int, pages: int = 1, max_pages: int | None = None,
               max_batch: int = 4, imports: str = "") -> bytes:
    """A hostile or faulty ABI v1 module: ``body`` is the code of ``infer`` (param $n, result i32)."""
    limit = f" {max_pages}" if max_pages is not None else ""
    wat = f"""(module {imports}
 (memory (export "memory") {pages}{limit})
 (func (export "input_ptr") (result i32) (i32.const 0))
 (func (export "output_ptr") (result i32) (i32.const {max_batch * n_in * 4}))
 (func (export "max_batch") (result i32) (i32.const {max_batch}))
 (func (export "infer") (param $n i32) (result i32) {body}))"""
    return wasmtime.wat2wasm(wat)


#: infer bodies of hostile modules
LOOP_FOREVER = "(loop $l (br $l)) (i32.const 0)"
GROW_FOREVER = "(loop $l (drop (memory.grow (i32.const 1))) (br $l)) (i32.const 0)"
GROW_THEN_TRAP = "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable"
#: traps when the first input float is negative, else writes input[0] to output[0]: a poisoned record
TRAP_IF_NEGATIVE = """(if (f32.lt (f32.load (i32.const 0)) (f32.const 0)) (then unreachable))
 (f32.store (i32.const {out}) (f32.load (i32.const 0))) (i32.const 0)"""
RETURN_STATUS_7 = "(i32.const 7)"


def manifest(
    sizes: Sequence[int],
    *,
    name: str = "test-agent",
    targets: Sequence[str] = ("onnx", "wasm"),
    memory_mb: float = 64,
    cpu_cores: float = 1.0,
    max_batch: int = 8,
    workflows: dict | None = None,
) -> dict:
    """A manifest with the exact keys of the bundle contract."""
    layers = [
        {"index": k, "in": i, "out": o, "activation": "relu" if k < len(sizes) - 2 else "linear",
         "parameters": i * o + o}
        for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]
    return {
        "format": "afb",
        "format_version": "1.0",
        "agent": {"name": name, "version": "1.0"},
        "compiler": {"name": "tests", "version": "0"},
        "source": {"file": "test.af", "sha256": hashlib.sha256(b"test").hexdigest()},
        "network": {
            "input": {"name": "input", "dtype": "float32", "shape": [None, sizes[0]]},
            "output": {"name": "output", "dtype": "float32", "shape": [None, sizes[-1]]},
            "layers": layers,
            "hidden_activation": "relu",
            "output_activation": "linear",
            "parameters": sum(layer["parameters"] for layer in layers),
        },
        "targets": list(targets),
        "onnx": {"member": "model.onnx", "opset": 17, "ir_version": 9},
        "wasm": {"member": "model.wasm", "abi": 1, "max_batch": max_batch, "memory_pages": 1},
        "resources": {
            "limits": {"memory_mb": memory_mb, "cpu_cores": cpu_cores, "disk_mb": 10, "network_bandwidth_mbps": 10},
            "requirements": {"minimum_memory_mb": 1, "minimum_cpu_cores": 0.5},
        },
        "workflows": workflows if workflows is not None else {
            "initialization": [{"name": "load_neural_network", "args": {}, "when": None,
                                "source": "load_neural_network", "span": None}],
            "execution": [
                {"name": "process_neural_network", "args": {}, "when": None, "source": "process_neural_network",
                 "span": None},
                {"name": "send_output", "args": {"topic": "task.completion"},
                 "when": {"op": ">", "args": [{"field": ["output", "max"]}, {"const": 0.5}]},
                 "source": "send_output(topic=\"task.completion\") when output.max > 0.5", "span": None},
            ],
            "shutdown": [],
        },
    }


def make_bundle(
    sizes: Sequence[int] = (6, 5, 4, 3),
    *,
    seed: int = 0,
    onnx_bytes: bytes | None = None,
    wasm_bytes: bytes | None = None,
    **manifest_options,
) -> tuple[bytes, Weights]:
    """Write a real .afb (via `afcore.bundle.write_bundle`) and return (bytes, weights)."""
    weights = random_weights(sizes, seed=seed)
    max_batch = manifest_options.get("max_batch", 8)
    members = {
        "model.onnx": onnx_bytes if onnx_bytes is not None else onnx_model(weights).SerializeToString(),
        "model.wasm": wasm_bytes if wasm_bytes is not None else wasm_module(weights, max_batch=max_batch),
    }
    return write_bundle(manifest(sizes, **manifest_options), members), weights


def bundle_object(data: bytes) -> Bundle:
    """Read bundle bytes into an `afcore.bundle.Bundle`."""
    from afcore.bundle import read_bundle

    return read_bundle(data)
