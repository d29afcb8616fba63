"""Lower a `NetworkSpec` to a self-contained WebAssembly module (ABI v2, see docs/bundle.md).

The code is generated as WebAssembly text and assembled with `wasmtime.wat2wasm`; the weights are spliced in
afterwards as binary data segments (`afc._wasm_binary`), so the text never holds a weight. The module has no
imports. Dense layers are f32x4 SIMD kernels over a weight layout made for them: each layer's ``[out, in]``
matrix is stored in blocks of 4 output neurons, interleaved by input (``block[b][i] = w[4b:4b+4, i]``), so
one ``v128.load`` gives 4 neurons' weights for one input, multiplied by that input splatted to 4 lanes. How
the inner loop is shaped, and why, is told in `_Kernel`.

The weights stay in linear memory, where `infer` reads them on every call; ABI v2's exports
``weights_ptr(layer)`` and ``normalization_ptr()`` tell the host where they and the input normalisation
are, so that the runtime can write new weights in the same blocked layout (online learning,
`afrt.weights.pack_blocked`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from afcore.errors import LoweringError

from ._wasm_binary import DataSegment, splice_data_section, validate_module
from ._wasm_math import ACTIVATION_FUNCS, MATH_WAT, f32x4

if TYPE_CHECKING:
    from .spec import LayerSpec, NetworkSpec

__all__ = ["ABI_VERSION", "STAGE_BAD_INDEX", "WasmModule", "lower_network", "plan_memory_pages"]

#: the version of the host <-> module contract documented in docs/bundle.md. v2 adds the exports
#: ``weights_ptr(layer)``, the address of each layer's packed weights and bias (writable: online learning),
#: and ``normalization_ptr()``, the address of the input normalisation (0 without)
ABI_VERSION = 2
#: bytes in a WebAssembly page
PAGE = 65536
#: the most pages a 32-bit linear memory may have (4 GiB)
MAX_PAGES = 65536
#: samples per tile in the batched kernel, and 4-neuron blocks per tile: 12 accumulators
TILE_SAMPLES, TILE_BLOCKS = 3, 4
#: 4-neuron blocks per tile for the samples left over (and batch 1)
SINGLE_BLOCKS = 6
#: inputs per accumulator update: UNROLL * (TILE_SAMPLES + TILE_BLOCKS) = 14 vectors loaded at once
UNROLL = 2
#: sets of accumulators used in turn by consecutive input chunks (hides the store -> load latency)
ACC_SETS = 4
#: bytes of the accumulator area, just below the splat area
ACC_BYTES = 16 * ACC_SETS * max(TILE_SAMPLES * TILE_BLOCKS, SINGLE_BLOCKS)
#: the first address used: 0 stays unused so that a null pointer never reads a weight
BASE = 64
#: the largest max_batch accepted (keeps addresses in 32 bits for any reasonable layer)
MAX_BATCH_LIMIT = 1 << 20
_OUTPUT_ACTIVATIONS = ("softmax", "sigmoid", "linear")


@dataclass(frozen=True)
class WasmModule:
    """A lowered network.

    Attributes:
        wasm: the validated module bytes (code plus weights in data segments).
        max_batch: the largest ``batch`` that ``infer`` accepts.
        memory_pages: the initial (and maximum) number of 64 KiB pages of the exported memory.
        wat: the generated WebAssembly text without the weights (for ``af compile --emit=wat``).
        abi: the ABI version the module implements (the manifest's ``wasm.abi``).
    """

    wasm: bytes | bytearray
    max_batch: int
    memory_pages: int
    wat: str
    abi: int = ABI_VERSION


@dataclass(frozen=True)
class _LayerPlan:
    """Where one layer's weights, bias, input and output live in linear memory (byte addresses)."""

    index: int
    in_size: int
    out_size: int
    blocks: int
    activation: str
    weights: int
    bias: int
    x: int
    x_stride: int  # floats between samples of the input
    y: int
    y_stride: int


def _align(value: int, to: int = 16) -> int:
    return (value + to - 1) // to * to


def _layer_activation(network: NetworkSpec, position: int) -> str:
    last = position == len(network.layers) - 1
    name = network.output_activation if last else network.hidden_activation
    allowed = _OUTPUT_ACTIVATIONS if last else tuple(ACTIVATION_FUNCS)
    if name not in allowed:
        kind = "output" if last else "hidden"
        raise LoweringError(
            f"the WebAssembly backend has no {kind} activation `{name}`",
            code="AF3103",
            hint=f"use one of: {', '.join(allowed)}",
        )
    return "linear" if name == "softmax" else name


def _check_shapes(network: NetworkSpec) -> None:
    expected = network.input_size
    for layer in network.layers:
        w, b = layer.weight, layer.bias
        if w.ndim != 2 or w.shape[1] != expected or b.shape != (w.shape[0],):
            raise LoweringError(
                f"layer {layer.index} has weight {tuple(w.shape)} and bias {tuple(b.shape)}, expected [out, {expected}]",
                code="AF3104",
                hint="layer shapes must chain from input_size to output_size; `af validate` reports where",
            )
        expected = w.shape[0]
    if not network.layers or expected != network.output_size:
        raise LoweringError(
            f"the network's layers end at {expected} outputs, not output_size {network.output_size}",
            code="AF3104",
            hint="layer shapes must chain from input_size to output_size; `af validate` reports where",
        )


@dataclass(frozen=True)
class _Layout:
    layers: tuple[_LayerPlan, ...]
    normalization: int  # address of input_size means then input_size scales (float32), or 0 without
    input_ptr: int
    # (with a normalisation, the first layer reads the normalised rows: ``layers[0].x``)
    output_ptr: int
    scratch: int  # the last layer's padded output when it cannot write the output directly, else 0
    splat: int  # TILE_SAMPLES * widest input * 16 bytes: the current rows' inputs, each splatted to 4 lanes
    pages: int


def plan_memory_pages(network: NetworkSpec, *, max_batch: int) -> int:
    """Return the 64 KiB pages of linear memory the module of ``network`` starts with.

    Only the layers' sizes and activations are read, so validation can ask before any weight is
    decoded (with a stand-in that has ``input_size``, ``output_size``, the activations, and
    ``layers`` of ``index``, ``in_size`` and ``out_size``).

    Args:
        network: the network, or a stand-in with its shapes.
        max_batch: the batch the module is built for (`afc.compile.WASM_MAX_BATCH` by default).

    Returns:
        The pages `lower_network` gives the module (``WasmModule.memory_pages``).

    Raises:
        LoweringError: AF3101 when the memory would exceed wasm32's 4 GiB.
    """
    return _plan_layout(network, max_batch).pages


def _plan_layout(network: NetworkSpec, max_batch: int) -> _Layout:
    """Place weights first, then the input, two ping-pong activation buffers and the output."""
    pos, weights = BASE, []
    for layer in network.layers:
        blocks = -(-layer.out_size // 4)
        weights.append((pos, pos + blocks * layer.in_size * 16))
        pos = _align(pos + blocks * layer.in_size * 16 + blocks * 16)
    normalization = 0
    if getattr(network, "input_mean", None) is not None:
        normalization, pos = pos, _align(pos + 8 * network.input_size)
    input_ptr = pos
    widest = max(-(-layer.out_size // 4) * 4 for layer in network.layers)
    ping = _align(input_ptr + max_batch * network.input_size * 4)
    first_x = input_ptr
    if normalization:  # the normalised rows get their own buffer: the input stays as the host wrote it
        first_x, ping = ping, _align(ping + max_batch * network.input_size * 4)
    pong = ping + max_batch * widest * 4
    output_ptr = pong + max_batch * widest * 4
    splat = _align(output_ptr + max_batch * network.output_size * 4) + ACC_BYTES
    end = splat + TILE_SAMPLES * max(layer.in_size for layer in network.layers) * 16
    direct = network.output_size % 4 == 0 and network.output_activation != "softmax"
    plans, x, x_stride = [], first_x, network.input_size
    for position, layer in enumerate(network.layers):
        blocks = -(-layer.out_size // 4)
        last = position == len(network.layers) - 1
        y = output_ptr if last and direct else (ping if position % 2 == 0 else pong)
        plans.append(_LayerPlan(position, layer.in_size, layer.out_size, blocks, _layer_activation(network, position),
                                weights[position][0], weights[position][1], x, x_stride, y, blocks * 4))
        x, x_stride = y, blocks * 4
    pages = -(-end // PAGE)
    if pages > MAX_PAGES:
        raise LoweringError(
            f"the network needs {end / 2**30:.2f} GiB of linear memory at max_batch {max_batch}; wasm32 allows 4 GiB",
            code="AF3101",
            hint="lower max_batch, or compile with `--target onnx` only",
        )
    return _Layout(tuple(plans), normalization, input_ptr, output_ptr, 0 if direct else plans[-1].y, splat, pages)


class _PackedLayer:
    """A layer's data segment: weights in blocks of 4 neurons interleaved by input, then the bias (float32 LE).

    It writes straight into the module buffer (a `SegmentWriter`), zeros included: the padding of a last
    block with fewer than 4 neurons, and of the bias.
    """

    def __init__(self, layer: LayerSpec) -> None:
        self.layer = layer
        self.blocks = -(-layer.out_size // 4)
        self.nbytes = 4 * (self.blocks * layer.in_size * 4 + self.blocks * 4)

    def write_into(self, out: memoryview) -> None:
        """Write the packed weights and bias into ``out`` (``nbytes`` bytes, every one of them)."""
        weight, (n_out, n_in) = self.layer.weight, self.layer.weight.shape
        packed = np.frombuffer(out, dtype="<f4")
        grid = packed[: self.blocks * n_in * 4].reshape(self.blocks, n_in, 4)
        full = n_out // 4
        grid[:full] = weight[: full * 4].reshape(full, 4, n_in).transpose(0, 2, 1)
        if n_out % 4:
            grid[full, :, : n_out % 4] = weight[full * 4 :].T
            grid[full, :, n_out % 4 :] = 0
        bias = packed[self.blocks * n_in * 4 :]
        bias[:n_out] = self.layer.bias
        bias[n_out:] = 0


#: activations cheap enough to inline at the store instead of calling their function
_INLINE_ACTIVATIONS = {
    "linear": "{}",
    "relu": "(f32x4.max {} " + f32x4(0.0) + ")",
}


def _tree_sum(terms: list[str]) -> str:
    """WAT adding the v128 expressions ``terms`` pairwise (a shallow dependency tree)."""
    while len(terms) > 1:
        terms = [f"(f32x4.add {a} {b})" for a, b in zip(terms[::2], terms[1::2])] + terms[len(terms) // 2 * 2 :]
    return terms[0]


class _Kernel:
    """Generates the WAT function ``$layer<k>`` for one dense layer.

    Measured on Cranelift (wasmtime 50), which shaped this design:

    - Fuel (and epoch) checks at a loop header may call out to the host, which clobbers every vector register,
      so accumulators kept in locals are spilled to the stack in metered code (3.3x slower than unmetered).
      The accumulators therefore live in linear memory on purpose (an area of ``ACC_BYTES``), and metered and
      unmetered code run the same instructions (measured 1.0-1.05x).
    - Loads may trap, so Cranelift keeps them in order and emits the pure arithmetic only where a side effect
      needs it: everything one iteration loads is live at once. The explicit store of each accumulator forces
      its arithmetic right there, and one update loads ``UNROLL * (S + B)`` <= 14 vectors, which fit the 16
      registers. Its products are summed as a tree and added to the accumulator once.
    - ``ACC_SETS`` accumulator sets take turns on consecutive input chunks, so each store -> load round trip
      (about 10 cycles) is overlapped by the other sets' work; they are summed at the end.
    - The inputs are splatted once per row group into a scratch area (``x4[i][s]`` = 4 copies of
      ``x[n+s, i]``), so the inner loop is plain 16-byte loads, mul and add (no shuffles).
    """

    def __init__(self, plan: _LayerPlan, splat: int) -> None:
        self.p = plan
        self.splat = splat

    def function(self) -> str:
        """Return the layer's WAT function: row groups of ``TILE_SAMPLES``, then single rows."""
        p = self.p
        blocks, samples = max(TILE_BLOCKS, SINGLE_BLOCKS), TILE_SAMPLES
        ins = " ".join(f"(local $x{u}_{s} v128)" for u in range(UNROLL) for s in range(samples))
        ws = " ".join(f"(local $w{u}_{b} v128)" for u in range(UNROLL) for b in range(blocks))
        return f"""
  (func $layer{p.index} (param $batch i32)
    ;; {p.in_size} -> {p.out_size} ({p.activation}); x at {p.x} stride {p.x_stride}, y at {p.y} stride {p.y_stride}
    (local $n i32) (local $i i32) (local $g i32) (local $wg i32) (local $bg i32) (local $yg i32) (local $wp i32)
    (local $xp i32) {ins} {ws}
    (block $groups_done
      (loop $groups
        (br_if $groups_done (i32.gt_u (i32.add (local.get $n) (i32.const {samples})) (local.get $batch)))
        {self.rows(samples, TILE_BLOCKS)}
        (local.set $n (i32.add (local.get $n) (i32.const {samples})))
        (br $groups)))
    (block $singles_done
      (loop $singles
        (br_if $singles_done (i32.ge_u (local.get $n) (local.get $batch)))
        {self.rows(1, SINGLE_BLOCKS)}
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $singles))))"""

    def rows(self, samples: int, blocks: int) -> str:
        """Code for ``samples`` rows from $n: splat their inputs, then full tiles of ``blocks`` and the rest."""
        p = self.p
        full, rest = divmod(p.blocks, blocks)
        splats = " ".join(
            f"(v128.store offset={16 * s} (local.get $xp) (v128.load32_splat offset={4 * s * p.x_stride} (local.get $wp)))"
            for s in range(samples))
        code = [
            f"(local.set $wp (i32.add (i32.const {p.x}) (i32.mul (local.get $n) (i32.const {p.x_stride * 4}))))",
            f"(local.set $xp (i32.const {self.splat})) (local.set $i (i32.const {p.in_size}))",
            f"""(loop $splat
          {splats}
          (local.set $xp (i32.add (local.get $xp) (i32.const {16 * samples})))
          (local.set $wp (i32.add (local.get $wp) (i32.const 4)))
          (br_if $splat (local.tee $i (i32.sub (local.get $i) (i32.const 1)))))""",
            f"(local.set $yg (i32.add (i32.const {p.y}) (i32.mul (local.get $n) (i32.const {p.y_stride * 4}))))",
            f"(local.set $wg (i32.const {p.weights})) (local.set $bg (i32.const {p.bias}))",
        ]
        if full:
            code.append(f"""(local.set $g (i32.const {full}))
        (loop $tiles
          {self.tile(samples, blocks)}
          (local.set $wg (i32.add (local.get $wg) (i32.const {blocks * p.in_size * 16})))
          (local.set $bg (i32.add (local.get $bg) (i32.const {blocks * 16})))
          (local.set $yg (i32.add (local.get $yg) (i32.const {blocks * 16})))
          (br_if $tiles (local.tee $g (i32.sub (local.get $g) (i32.const 1)))))""")
        if rest:
            code.append(self.tile(samples, rest))
        return "\n        ".join(code)

    def tile(self, samples: int, blocks: int) -> str:
        """One tile whose accumulators live in the accumulator area, in ``ACC_SETS`` sets used in turn."""
        p = self.p
        pairs = [(s, b) for s in range(samples) for b in range(blocks)]
        base = self.splat - ACC_BYTES
        accs = [{pair: base + 16 * (k + len(pairs) * j) for k, pair in enumerate(pairs)} for j in range(ACC_SETS)]
        code = [f"(v128.store offset={accs[0][s, b]} (i32.const 0) (v128.load offset={16 * b} (local.get $bg)))"
                for s, b in pairs]
        code += [f"(v128.store offset={acc[pair]} (i32.const 0) {f32x4(0.0)})" for acc in accs[1:] for pair in pairs]
        code.append(f"(local.set $wp (local.get $wg)) (local.set $xp (i32.const {self.splat}))")
        per_loop = UNROLL * ACC_SETS
        loops, tail = divmod(p.in_size, per_loop)
        if loops:
            body = "\n            ".join(self.steps(samples, blocks, UNROLL, acc, j * UNROLL)
                                          for j, acc in enumerate(accs))
            code.append(f"""(local.set $i (i32.const {loops}))
          (loop $inputs
            {body}
            {self.advance(samples, per_loop)}
            (br_if $inputs (local.tee $i (i32.sub (local.get $i) (i32.const 1)))))""")
        for start in range(0, tail, UNROLL):
            code.append(self.steps(samples, blocks, min(UNROLL, tail - start), accs[0], start))
        total = {pair: _tree_sum([f"(v128.load offset={acc[pair]} (i32.const 0))" for acc in accs]) for pair in pairs}
        code += [f"(v128.store offset={s * p.y_stride * 4 + 16 * b} (local.get $yg) {self.activate(total[s, b])})"
                 for s, b in pairs]
        return "\n          ".join(code)

    def advance(self, samples: int, inputs: int) -> str:
        """WAT moving the weight and splatted-input pointers on by ``inputs`` inputs."""
        return (f"(local.set $wp (i32.add (local.get $wp) (i32.const {inputs * 16}))) "
                f"(local.set $xp (i32.add (local.get $xp) (i32.const {inputs * samples * 16})))")

    def steps(self, samples: int, blocks: int, count: int, acc: dict, first: int) -> str:
        """Load inputs ``first .. first+count`` (relative to the pointers), add each tile's products to ``acc``."""
        stride = self.p.in_size * 16
        code = []
        for u in range(count):
            code += [f"(local.set $x{u}_{s} (v128.load offset={16 * ((first + u) * samples + s)} (local.get $xp)))"
                     for s in range(samples)]
            code += [f"(local.set $w{u}_{b} (v128.load offset={b * stride + 16 * (first + u)} (local.get $wp)))"
                     for b in range(blocks)]
        for s, b in acc:
            products = _tree_sum([f"(f32x4.mul (local.get $w{u}_{b}) (local.get $x{u}_{s}))" for u in range(count)])
            code.append(f"(v128.store offset={acc[s, b]} (i32.const 0) "
                        f"(f32x4.add (v128.load offset={acc[s, b]} (i32.const 0)) {products}))")
        return "\n            ".join(code)

    def activate(self, value: str) -> str:
        """WAT applying this layer's activation to the v128 expression ``value``."""
        inline = _INLINE_ACTIVATIONS.get(self.p.activation)
        return inline.format(value) if inline else f"(call {ACTIVATION_FUNCS[self.p.activation]} {value})"


def _finish_function(network: NetworkSpec, layout: _Layout) -> str:
    """WAT for ``$finish``: softmax, or a copy of the padded last layer into the dense output."""
    if not layout.scratch:
        return "\n  (func $finish (param $batch i32))"
    width, blocks = network.output_size, -(-network.output_size // 4)
    row = (f"(local.set $s (i32.add (i32.const {layout.scratch}) (i32.mul (local.get $n) (i32.const {blocks * 16}))))"
           f"(local.set $o (i32.add (i32.const {layout.output_ptr}) (i32.mul (local.get $n) (i32.const {width * 4}))))")
    if network.output_activation == "softmax":
        body = "(call $softmax_row (local.get $s) (local.get $o))"
    else:
        body = f"(memory.copy (local.get $o) (local.get $s) (i32.const {width * 4}))"
    return f"""
  (func $finish (param $batch i32) (local $n i32) (local $s i32) (local $o i32)
    (loop $rows
      {row}
      {body}
      (br_if $rows (i32.lt_u (local.tee $n (i32.add (local.get $n) (i32.const 1))) (local.get $batch)))))
  {_softmax_row(width, blocks)}"""


def _softmax_row(width: int, blocks: int) -> str:
    """WAT for ``$softmax_row(src, dst)``: max-subtracted exp (with the exact subtraction error), f64 sum."""
    return f"""(func $softmax_row (param $s i32) (param $o i32)
    (local $j i32) (local $m f32) (local $v v128) (local $d v128) (local $err v128) (local $e v128) (local $sum f64)
    (local.set $m (f32.const -inf))
    (loop $max
      (local.set $m (f32.max (local.get $m) (f32.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2))))))
      (br_if $max (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (i32.const {width}))))
    (local.set $j (i32.const 0))
    (loop $exp
      (local.set $v (v128.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 4)))))
      ;; d = v - m rounded; err = its exact rounding error (TwoSum), NaN from infinities replaced by 0
      (local.set $d (f32x4.sub (local.get $v) (f32x4.splat (local.get $m))))
      (local.set $e (f32x4.sub (local.get $d) (local.get $v)))
      (local.set $err (f32x4.add (f32x4.sub (local.get $v) (f32x4.sub (local.get $d) (local.get $e)))
                                 (f32x4.sub (f32x4.neg (f32x4.splat (local.get $m))) (local.get $e))))
      (local.set $err (v128.and (local.get $err) (f32x4.eq (local.get $err) (local.get $err))))
      (local.set $e (call $exp (local.get $d)))
      (v128.store (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 4)))
                  (f32x4.add (local.get $e) (f32x4.mul (local.get $e) (local.get $err))))
      (br_if $exp (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (i32.const {blocks}))))
    (local.set $j (i32.const 0))
    (loop $sum
      (local.set $sum (f64.add (local.get $sum)
                               (f64.promote_f32 (f32.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2)))))))
      (br_if $sum (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (i32.const {width}))))
    (local.set $j (i32.const 0))
    (loop $div
      (f32.store (i32.add (local.get $o) (i32.shl (local.get $j) (i32.const 2)))
                 (f32.demote_f64 (f64.div (f64.promote_f32 (f32.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2)))))
                                          (local.get $sum))))
      (br_if $div (i32.lt_u (local.tee $j (i32.add (local.get $j) (i32.const 1))) (i32.const {width})))))"""


def _normalize_function(network: NetworkSpec, layout: _Layout) -> str:
    """WAT for ``$normalize``: ``(x - mean) / scale`` per input, from the input rows into the first layer's
    input buffer, in scalar f32 (StandardScaler's arithmetic, rounded as the ONNX model's Sub and Div round
    it). Without a normalisation it does nothing."""
    if not layout.normalization:
        return "\n  (func $normalize (param $batch i32))"
    row = network.input_size * 4
    shift = layout.layers[0].x - layout.input_ptr
    return f"""
  (func $normalize (param $batch i32) (local $p i32) (local $end i32) (local $i i32)
    ;; means at {layout.normalization}, scales at {layout.normalization + row}; rows to {layout.layers[0].x}
    (local.set $p (i32.const {layout.input_ptr}))
    (local.set $end (i32.add (i32.const {layout.input_ptr}) (i32.mul (local.get $batch) (i32.const {row}))))
    (loop $rows
      (local.set $i (i32.const 0))
      (loop $inputs
        (f32.store offset={shift} (i32.add (local.get $p) (local.get $i))
          (f32.div (f32.sub (f32.load (i32.add (local.get $p) (local.get $i)))
                            (f32.load offset={layout.normalization} (local.get $i)))
                   (f32.load offset={layout.normalization + row} (local.get $i))))
        (br_if $inputs (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 4))) (i32.const {row}))))
      (br_if $rows (i32.lt_u (local.tee $p (i32.add (local.get $p) (i32.const {row}))) (local.get $end)))))"""


def _weights_ptr_function(layout: _Layout) -> str:
    """WAT for the ABI v2 exports ``weights_ptr(layer)``: where layer ``layer``'s packed weights start
    (its bias follows them, `_PackedLayer`), or 0 for no such layer; and ``normalization_ptr()``: where
    the input means and then the scales are (what a learner must apply to inputs), or 0 without."""
    cases = " ".join(f"(if (i32.eq (local.get $layer) (i32.const {p.index})) (then (return (i32.const {p.weights}))))"
                     for p in layout.layers)
    return (f'  (func (export "weights_ptr") (param $layer i32) (result i32)\n    {cases}\n    (i32.const 0))\n'
            f'  (func (export "normalization_ptr") (result i32) (i32.const {layout.normalization}))')


#: status of ``stage`` for an index outside ``0 .. stage_count - 1`` (1 is a bad batch, as for ``infer``)
STAGE_BAD_INDEX = 2


def _stage_functions(layout: _Layout, max_batch: int) -> str:
    """WAT for the optional per-stage exports (docs/bundle.md, "Per-stage exports"): ``stage_count`` and
    ``stage(index, batch)``, which runs one of the functions ``infer`` calls, in ``infer``'s order:
    0 ``$normalize``, 1..L ``$layer<k>``, L + 1 ``$finish``. They call the very functions ``infer`` calls,
    on the same memory, so that the profiler times the run's own kernels one at a time (`afprof.layers`)."""
    targets = ["normalize"] + [f"layer{plan.index}" for plan in layout.layers] + ["finish"]
    labels = " ".join(f"$s_{name}" for name in targets)
    code = f"(br_table {labels} $bad (local.get $index))"
    for name in targets:  # each block's end is where br_table sends its index
        code = f"(block $s_{name}\n      {code})\n    (call ${name} (local.get $batch)) (return (i32.const 0))"
    return f"""
  (func (export "stage_count") (result i32) (i32.const {len(targets)}))
  (func (export "stage") (param $index i32) (param $batch i32) (result i32)
    (if (i32.ge_u (i32.sub (local.get $batch) (i32.const 1)) (i32.const {max_batch}))
      (then (return (i32.const 1))))
    (block $bad
    {code})
    (i32.const {STAGE_BAD_INDEX}))"""


def _module_wat(network: NetworkSpec, layout: _Layout, max_batch: int) -> str:
    layers = "".join(_Kernel(plan, layout.splat).function() for plan in layout.layers)
    calls = " ".join(f"(call $layer{plan.index} (local.get $batch))" for plan in layout.layers)
    segments = "\n".join(f";;   layer {p.index}: weights at {p.weights}, bias at {p.bias}" for p in layout.layers)
    return f""";; af WebAssembly ABI v{ABI_VERSION}: {network.input_size} -> {network.output_size}, max_batch {max_batch}
;; data segments (binary, not shown):
{segments}
(module
  (memory (export "memory") {layout.pages} {layout.pages})
  (func (export "input_ptr") (result i32) (i32.const {layout.input_ptr}))
  (func (export "output_ptr") (result i32) (i32.const {layout.output_ptr}))
  (func (export "max_batch") (result i32) (i32.const {max_batch}))
{_weights_ptr_function(layout)}
  (func (export "infer") (param $batch i32) (result i32)
    ;; batch - 1 >= max_batch as unsigned rejects 0, negatives and too large at once
    (if (i32.ge_u (i32.sub (local.get $batch) (i32.const 1)) (i32.const {max_batch}))
      (then (return (i32.const 1))))
    (call $normalize (local.get $batch))
    {calls}
    (call $finish (local.get $batch))
    (i32.const 0))
{_stage_functions(layout, max_batch)}
{_normalize_function(network, layout)}
{layers}
{_finish_function(network, layout)}
{MATH_WAT})
"""


def lower_network(network: NetworkSpec, *, max_batch: int = 64) -> WasmModule:
    """Lower ``network`` to a self-contained, validated WebAssembly module (ABI v2).

    Args:
        network: the IR of the network (float32 weights ``[out, in]`` per layer).
        max_batch: the largest batch ``infer`` accepts; the memory holds activations for that many samples.

    Returns:
        The module bytes with the weights in binary data segments, and its text without the weights.

    Raises:
        LoweringError: AF3101 if the memory would exceed 4 GiB, AF3102 for a bad ``max_batch``, AF3103 for an
            activation the backend lacks, AF3104 for layer shapes that do not chain, AF3199 if wasmtime
            rejects the generated module (a bug in af).
    """
    import wasmtime

    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        raise LoweringError(f"max_batch must be between 1 and {MAX_BATCH_LIMIT}, not {max_batch}", code="AF3102",
                            hint="64 suits most agents")
    _check_shapes(network)
    layout = _plan_layout(network, max_batch)
    wat = _module_wat(network, layout, max_batch)
    try:
        code = wasmtime.wat2wasm(wat)
    except wasmtime.WasmtimeError as exc:
        raise LoweringError(f"generated WebAssembly text does not assemble: {exc}", code="AF3199",
                            hint="this is a bug in af: please report it with the .af file") from exc
    segments = [DataSegment(plan.weights, _PackedLayer(layer)) for plan, layer in zip(layout.layers, network.layers)]
    if layout.normalization:
        values = np.concatenate([network.input_mean, network.input_scale]).astype("<f4")
        segments.append(DataSegment(layout.normalization, values))
    wasm = splice_data_section(bytes(code), segments)
    try:
        validate_module(wasm)
    except wasmtime.WasmtimeError as exc:
        raise LoweringError(f"wasmtime rejects the generated module: {exc}", code="AF3199",
                            hint="this is a bug in af: please report it with the .af file") from exc
    return WasmModule(wasm=wasm, max_batch=max_batch, memory_pages=layout.pages, wat=wat)
