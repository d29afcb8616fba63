"""afc.lower_wasm: forward passes against float64 numpy, the ABI v1 exports, the binary data section, errors."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afc._wasm_binary import DataSegment, sleb128, splice_data_section, uleb128, validate_module
from afc.lower_wasm import WasmModule, lower_network
from afc.spec import HIDDEN_ACTIVATIONS, LayerSpec, NetworkSpec
from afcore.errors import LoweringError


def make_network(sizes, hidden="relu", output="linear", *, seed=0) -> NetworkSpec:
    """A random network with the given layer sizes (input first)."""
    rng = np.random.default_rng(seed)
    layers = []
    for index, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        last = index == len(sizes) - 2
        weight = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        bias = rng.standard_normal(n_out).astype(np.float32) * 0.5
        layers.append(LayerSpec(index, weight, bias, output if last else hidden))
    return NetworkSpec(sizes[0], sizes[-1], tuple(layers), hidden_activation=hidden, output_activation=output)


def _activate(z: np.ndarray, name: str) -> np.ndarray:
    from scipy.special import erfc

    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return {
        "relu": lambda: np.maximum(z, 0.0),
        "leaky_relu": lambda: np.where(z > 0, z, 0.01 * z),
        "sigmoid": lambda: 1.0 / (1.0 + np.exp(-z)),
        "tanh": lambda: np.tanh(z),
        "linear": lambda: z,
        "elu": lambda: np.where(z > 0, z, np.expm1(z)),
        "gelu": lambda: 0.5 * z * erfc(-z / np.sqrt(2.0)),
        "softplus": lambda: np.logaddexp(0.0, z),
    }[name]()


def numpy_forward(network: NetworkSpec, x: np.ndarray) -> np.ndarray:
    """The float64 reference forward pass."""
    h = x.astype(np.float64)
    for index, layer in enumerate(network.layers):
        z = h @ layer.weight.astype(np.float64).T + layer.bias.astype(np.float64)
        last = index == len(network.layers) - 1
        h = _activate(z, network.output_activation if last else network.hidden_activation)
    return h


class Runner:
    """Instantiates a lowered module and runs batches through the ABI (optionally fuel-metered)."""

    def __init__(self, module: WasmModule, *, fuel: int | None = None) -> None:
        config = wasmtime.Config()
        config.consume_fuel = fuel is not None
        engine = wasmtime.Engine(config)
        self.store = wasmtime.Store(engine)
        if fuel is not None:
            self.store.set_fuel(fuel)
        self.instance = wasmtime.Instance(self.store, wasmtime.Module(engine, module.wasm), [])
        self.exports = self.instance.exports(self.store)
        self.memory = self.exports["memory"]

    def call(self, name: str, *args: int) -> int:
        return self.exports[name](self.store, *args)

    def run(self, x: np.ndarray, n_out: int) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype="<f4")
        self.memory.write(self.store, x.tobytes(), self.call("input_ptr"))
        assert self.call("infer", len(x)) == 0
        start = self.call("output_ptr")
        raw = self.memory.read(self.store, start, start + len(x) * n_out * 4)
        return np.frombuffer(bytes(raw), dtype="<f4").reshape(len(x), n_out)


SHAPES = [
    [784, 128, 64, 32, 10],
    [1, 1, 1],
    [1, 1],
    [5, 7, 3],
    [3, 1, 9, 4],
    [13, 6, 2],
    [8, 8],
    [33, 17, 29, 5],
    [4, 25, 1],
]


class TestForwardPass:
    @pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: "-".join(map(str, s)))
    @pytest.mark.parametrize("output", ["softmax", "sigmoid", "linear"])
    def test_shapes_and_batches_match_numpy(self, sizes, output):
        network = make_network(sizes, "relu", output, seed=len(sizes))
        runner = Runner(lower_network(network, max_batch=16))
        rng = np.random.default_rng(1)
        for batch in (1, 2, 3, 15, 16):
            x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
            np.testing.assert_allclose(runner.run(x, sizes[-1]), numpy_forward(network, x), rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
    def test_every_hidden_activation(self, hidden):
        network = make_network([19, 23, 7, 6], hidden, "softmax", seed=3)
        runner = Runner(lower_network(network, max_batch=64))
        x = (np.random.default_rng(2).standard_normal((64, 19)) * 3).astype(np.float32)
        for batch in (1, 5, 64):
            np.testing.assert_allclose(runner.run(x[:batch], 6), numpy_forward(network, x[:batch]),
                                       rtol=1e-5, atol=1e-5)

    def test_state_does_not_leak_between_calls(self):
        network = make_network([6, 10, 3], "tanh", "softmax")
        runner = Runner(lower_network(network, max_batch=8))
        x = np.random.default_rng(5).standard_normal((8, 6)).astype(np.float32)
        first = runner.run(x, 3)
        runner.run(np.full((8, 6), 1e6, dtype=np.float32), 3)
        np.testing.assert_array_equal(runner.run(x, 3), first)

    def test_wide_layer(self):
        network = make_network([1000, 300, 10], "gelu", "linear", seed=9)
        runner = Runner(lower_network(network, max_batch=32))
        x = np.random.default_rng(3).standard_normal((32, 1000)).astype(np.float32)
        np.testing.assert_allclose(runner.run(x, 10), numpy_forward(network, x), rtol=1e-5, atol=1e-5)


class TestRandomNetworks:
    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        sizes=st.lists(st.integers(1, 40), min_size=2, max_size=5),
        hidden=st.sampled_from(HIDDEN_ACTIVATIONS),
        output=st.sampled_from(["softmax", "sigmoid", "linear"]),
        max_batch=st.integers(1, 9),
        seed=st.integers(0, 2**16),
    )
    def test_any_shape_matches_numpy(self, sizes, hidden, output, max_batch, seed):
        network = make_network(sizes, hidden, output, seed=seed)
        runner = Runner(lower_network(network, max_batch=max_batch))
        x = np.random.default_rng(seed).standard_normal((max_batch, sizes[0])).astype(np.float32)
        for batch in {1, max_batch // 2 or 1, max_batch}:
            np.testing.assert_allclose(runner.run(x[:batch], sizes[-1]), numpy_forward(network, x[:batch]),
                                       rtol=1e-5, atol=1e-5)


class TestSklearnReference:
    def test_argmax_equals_mlpclassifier_predict_on_digits(self):
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=60, random_state=0).fit(x, y)
        layers = tuple(
            LayerSpec(i, np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32),
                      "softmax" if i == len(clf.coefs_) - 1 else "relu")
            for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_))
        )
        network = NetworkSpec(64, 10, layers, hidden_activation="relu", output_activation="softmax")
        runner = Runner(lower_network(network, max_batch=256))
        predicted = np.concatenate([runner.run(x[i : i + 256], 10).argmax(axis=1) for i in range(0, len(x), 256)])
        np.testing.assert_array_equal(predicted, clf.predict(x))


class TestAbi:
    def test_exports_and_no_imports(self):
        module = wasmtime.Module(wasmtime.Engine(), lower_network(make_network([5, 4, 3])).wasm)
        assert module.imports == []
        exports = {e.name: e.type for e in module.exports}
        assert set(exports) == {"memory", "input_ptr", "output_ptr", "max_batch", "infer", "weights_ptr",
                                "normalization_ptr", "stage_count", "stage"}
        assert isinstance(exports["memory"], wasmtime.MemoryType)
        i32 = wasmtime.ValType.i32()
        for name in ("input_ptr", "output_ptr", "max_batch", "stage_count"):
            assert exports[name].params == [] and exports[name].results == [i32]
        assert exports["infer"].params == [i32] and exports["infer"].results == [i32]
        assert exports["weights_ptr"].params == [i32] and exports["weights_ptr"].results == [i32]
        assert exports["stage"].params == [i32, i32] and exports["stage"].results == [i32]

    def test_weights_ptr_finds_each_layer_in_the_blocked_layout(self):
        # ABI v2: the host reads (and may write) layer k at weights_ptr(k); 0 past the last layer
        network = make_network([5, 6, 3])
        store = wasmtime.Store(wasmtime.Engine())
        instance = wasmtime.Instance(store, wasmtime.Module(store.engine, lower_network(network).wasm), [])
        exports = instance.exports(store)
        memory = exports["memory"]
        for k, layer in enumerate(network.layers):
            n_out, n_in = layer.weight.shape
            blocks = -(-n_out // 4)
            ptr = exports["weights_ptr"](store, k)
            raw = np.frombuffer(memory.read(store, ptr, ptr + 4 * (blocks * n_in * 4 + n_out)), "<f4")
            grid = raw[: blocks * n_in * 4].reshape(blocks, n_in, 4)
            for o in range(n_out):  # block o // 4, lane o % 4, input i
                np.testing.assert_array_equal(grid[o // 4, :, o % 4], layer.weight[o])
            np.testing.assert_array_equal(raw[blocks * n_in * 4 :], layer.bias)
        assert exports["weights_ptr"](store, len(network.layers)) == 0
        assert exports["normalization_ptr"](store) == 0

    def test_normalization_ptr_finds_means_then_scales(self):
        network = make_network([3, 4, 2])
        mean, scale = np.array([1, 2, 3], np.float32), np.array([0.5, 4, 8], np.float32)
        network = NetworkSpec(3, 2, network.layers, "relu", "linear", input_mean=mean, input_scale=scale)
        store = wasmtime.Store(wasmtime.Engine())
        exports = wasmtime.Instance(store, wasmtime.Module(store.engine, lower_network(network).wasm), []).exports(store)
        ptr = exports["normalization_ptr"](store)
        raw = np.frombuffer(exports["memory"].read(store, ptr, ptr + 24), "<f4")
        np.testing.assert_array_equal(raw, np.concatenate([mean, scale]))

    def test_pointers_batch_and_pages(self):
        lowered = lower_network(make_network([784, 128, 64, 32, 10]), max_batch=48)
        runner = Runner(lowered)
        assert runner.call("max_batch") == 48 == lowered.max_batch
        assert runner.memory.size(runner.store) == lowered.memory_pages
        input_ptr, output_ptr = runner.call("input_ptr"), runner.call("output_ptr")
        assert input_ptr % 16 == 0 and output_ptr % 16 == 0
        assert output_ptr >= input_ptr + 48 * 784 * 4
        assert output_ptr + 48 * 10 * 4 <= lowered.memory_pages * 65536

    @pytest.mark.parametrize("batch", [0, -1, 9, 2**31 - 1])
    def test_bad_batch_returns_nonzero(self, batch):
        runner = Runner(lower_network(make_network([3, 2]), max_batch=8))
        assert runner.call("infer", batch) != 0

    def test_fuel_metered_run_matches_and_runs_out(self):
        network = make_network([30, 20, 4], "tanh", "softmax")
        lowered = lower_network(network, max_batch=8)
        x = np.random.default_rng(0).standard_normal((8, 30)).astype(np.float32)
        metered = Runner(lowered, fuel=10**7)
        np.testing.assert_array_equal(metered.run(x, 4), Runner(lowered).run(x, 4))
        assert metered.store.get_fuel() < 10**7
        starved = Runner(lowered, fuel=100)
        with pytest.raises(wasmtime.Trap):
            starved.call("infer", 8)


class TestStageExports:
    """The optional per-stage exports: the stages run in order are ``infer``, one function at a time."""

    @pytest.mark.parametrize("sizes, output, normalized", [
        ([784, 128, 64, 32, 10], "softmax", False),
        ([5, 7, 3], "sigmoid", True),
        ([8, 8], "linear", False),  # the last layer writes the output directly: the output stage does nothing
        ([33, 17, 29, 5], "linear", True),
    ])
    def test_stages_in_order_give_infers_bits_and_each_layer_numpys(self, sizes, output, normalized):
        network = make_network(sizes, "relu", output)
        if normalized:
            rng = np.random.default_rng(1)
            network = dataclasses.replace(network, input_mean=rng.standard_normal(sizes[0]).astype(np.float32),
                                          input_scale=rng.uniform(0.5, 2.0, sizes[0]).astype(np.float32))
        lowered = lower_network(network, max_batch=8)
        x = np.random.default_rng(2).standard_normal((7, sizes[0])).astype(np.float32)
        whole = Runner(lowered).run(x, sizes[-1])
        staged = Runner(lowered)
        assert staged.call("stage_count") == len(network.layers) + 2
        staged.memory.write(staged.store, x.tobytes(), staged.call("input_ptr"))
        assert [staged.call("stage", k, 7) for k in range(len(network.layers) + 2)] == [0] * (len(network.layers) + 2)
        start = staged.call("output_ptr")
        got = np.frombuffer(bytes(staged.memory.read(staged.store, start, start + x.size // sizes[0] * sizes[-1] * 4)),
                            dtype="<f4").reshape(7, sizes[-1])
        np.testing.assert_array_equal(got.view(np.uint32), whole.view(np.uint32))  # bit for bit
        if normalized:
            x = (x - network.input_mean) / network.input_scale
        np.testing.assert_allclose(got, numpy_forward(network, x), rtol=1e-5, atol=1e-5)

    def test_bad_index_and_bad_batch(self):
        runner = Runner(lower_network(make_network([5, 4, 3]), max_batch=8))
        count = runner.call("stage_count")
        assert count == 4
        assert [runner.call("stage", k, 8) for k in range(count)] == [0] * count
        for index in (count, count + 1, -1, 2**31 - 1):
            assert runner.call("stage", index, 1) == 2
        for batch in (0, -1, 9):
            assert runner.call("stage", 0, batch) == 1

    def test_each_stage_is_metered_and_their_fuel_adds_up_to_infers(self):
        lowered = lower_network(make_network([30, 20, 4], "tanh", "softmax"), max_batch=8)
        whole = Runner(lowered, fuel=10**8)
        assert whole.call("infer", 8) == 0
        infer_fuel = 10**8 - whole.store.get_fuel()
        staged = Runner(lowered, fuel=10**8)
        used = []
        for k in range(staged.call("stage_count")):
            before = staged.store.get_fuel()
            assert staged.call("stage", k, 8) == 0
            used.append(before - staged.store.get_fuel())
        # each call of the dispatcher costs a few instructions (bounds check, br_table, call, return)
        assert 0 <= sum(used) - infer_fuel <= 16 * len(used)
        assert used[1] > used[2] > 0  # 30x20 multiply-adds against 20x4

    def test_module_grows_by_a_few_hundred_bytes(self):
        network = make_network([784, 128, 64, 32, 10], "relu", "softmax")
        lowered = lower_network(network)
        stripped = lowered.wat.replace(lowered.wat[lowered.wat.index('  (func (export "stage_count")'):
                                                   lowered.wat.index("  (func $normalize")], "")
        assert len(wasmtime.wat2wasm(lowered.wat)) - len(wasmtime.wat2wasm(stripped)) < 400


class TestModuleBytes:
    def test_weights_are_not_in_the_text(self):
        network = make_network([64, 32, 4])
        lowered = lower_network(network)
        ten_times_the_weights = lower_network(make_network([640, 32, 4]))
        assert abs(len(ten_times_the_weights.wat) - len(lowered.wat)) < 1000
        assert len(ten_times_the_weights.wasm) - len(lowered.wasm) > 576 * 32 * 4
        assert repr(float(network.layers[0].weight[0, 0])) not in lowered.wat
        assert "(data" not in lowered.wat
        assert network.layers[0].weight[:4, 0].astype("<f4").tobytes() in lowered.wasm

    def test_deterministic(self):
        network = make_network([20, 9, 3], "elu", "sigmoid")
        assert lower_network(network).wasm == lower_network(network).wasm

    def test_padding_is_zero_in_uninitialized_memory(self):
        # the module is built in uninitialized memory: dirty the allocator first, then check each padded
        # layer's segment against a packing written independently here, in zeroed numpy arrays
        garbage = [np.full(1 << 16, 0xA5, np.uint8).tobytes() for _ in range(64)]
        del garbage
        network = make_network([7, 5, 3], "relu", "linear")
        wasm = lower_network(network).wasm
        for layer in network.layers:
            blocks = -(-layer.out_size // 4)
            grid = np.zeros((blocks * 4, layer.in_size), np.float32)
            grid[: layer.out_size] = layer.weight
            packed = grid.reshape(blocks, 4, layer.in_size).transpose(0, 2, 1).astype("<f4").tobytes()
            bias = np.zeros(blocks * 4, "<f4")
            bias[: layer.out_size] = layer.bias
            assert packed + bias.tobytes() in wasm

    def test_validate_module_agrees_with_wasmtime(self):
        good = lower_network(make_network([5, 3])).wasm
        validate_module(good)
        wasmtime.Module.validate(wasmtime.Engine(), good)
        bad = good[: len(good) // 2]  # cut inside a section
        with pytest.raises(wasmtime.WasmtimeError):
            wasmtime.Module.validate(wasmtime.Engine(), bad)
        with pytest.raises(wasmtime.WasmtimeError):
            validate_module(bad)

    def test_validate_takes_the_bytearray_lowering_returns(self):
        wasm = lower_network(make_network([5, 3])).wasm
        assert isinstance(wasm, bytearray)
        validate_module(wasm)
        with pytest.raises(wasmtime.WasmtimeError):
            validate_module(wasm[: len(wasm) // 2])

    def test_section_order_has_data_after_code(self):
        ids = _section_ids(lower_network(make_network([5, 3])).wasm)
        non_custom = [i for i in ids if i != 0]
        assert non_custom == sorted(non_custom) and non_custom[-2:] == [10, 11]
        assert 12 not in ids  # no datacount: the code uses neither memory.init nor data.drop

    def test_text_layout_is_independent_of_weight_values(self):
        a, b = make_network([12, 8, 3], seed=1), make_network([12, 8, 3], seed=2)
        assert lower_network(a).wat == lower_network(b).wat


def _section_ids(module: bytes) -> list[int]:
    ids, pos = [], 8
    while pos < len(module):
        size, shift, body = 0, 0, pos + 1
        while True:
            byte = module[body]
            body += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        ids.append(module[pos])
        pos = body + size
    return ids


class TestBinarySplice:
    @pytest.mark.parametrize("value,encoded", [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"),
                                               (624485, b"\xe5\x8e\x26")])
    def test_uleb128(self, value, encoded):
        assert uleb128(value) == encoded

    @pytest.mark.parametrize("value,encoded", [(0, b"\x00"), (63, b"\x3f"), (64, b"\xc0\x00"), (-1, b"\x7f"),
                                               (-123456, b"\xc0\xbb\x78")])
    def test_sleb128(self, value, encoded):
        assert sleb128(value) == encoded

    def test_spliced_segments_land_in_memory_with_a_name_section_present(self):
        code = wasmtime.wat2wasm('(module $m (memory (export "memory") 1) (func $named (export "f")))')
        assert _section_ids(bytes(code))[-1] == 0  # wat2wasm ends with the custom `name` section
        data = np.arange(10, dtype="<f4")
        module = splice_data_section(bytes(code), [DataSegment(1000, data), DataSegment(64, data[:3])])
        store = wasmtime.Store()
        instance = wasmtime.Instance(store, wasmtime.Module(store.engine, module), [])
        memory = instance.exports(store)["memory"]
        assert bytes(memory.read(store, 1000, 1040)) == data.tobytes()
        assert bytes(memory.read(store, 64, 76)) == data[:3].tobytes()

    def test_offsets_above_2_gib_are_valid_i32_immediates(self):
        code = wasmtime.wat2wasm("(module (memory 65536 65536))")
        module = splice_data_section(bytes(code), [DataSegment(3 * 2**30, np.ones(4, dtype="<f4"))])
        wasmtime.Module.validate(wasmtime.Engine(), module)
        assert sleb128(3 * 2**30 - 2**32) in module

    def test_refuses_a_module_with_data(self):
        code = wasmtime.wat2wasm('(module (memory 1) (data (i32.const 0) "x"))')
        with pytest.raises(LoweringError) as info:
            splice_data_section(bytes(code), [])
        assert info.value.code == "AF3199"


class TestErrors:
    def test_memory_beyond_4_gib(self):
        with pytest.raises(LoweringError) as info:
            lower_network(make_network([1024, 1024]), max_batch=1 << 20)
        assert info.value.code == "AF3101" and "GiB" in info.value.message

    @pytest.mark.parametrize("max_batch", [0, -3, (1 << 20) + 1])
    def test_bad_max_batch(self, max_batch):
        with pytest.raises(LoweringError) as info:
            lower_network(make_network([3, 2]), max_batch=max_batch)
        assert info.value.code == "AF3102"

    def test_unknown_hidden_activation(self):
        network = make_network([3, 4, 2], "swish")
        with pytest.raises(LoweringError) as info:
            lower_network(network)
        assert info.value.code == "AF3103" and "swish" in info.value.message

    def test_softmax_only_on_the_output(self):
        with pytest.raises(LoweringError) as info:
            lower_network(make_network([3, 4, 2], "softmax"))
        assert info.value.code == "AF3103"

    def test_shapes_that_do_not_chain(self):
        good = make_network([4, 3, 2])
        broken = NetworkSpec(4, 2, (good.layers[0], LayerSpec(1, np.ones((2, 5), np.float32),
                                                                  np.zeros(2, np.float32), "linear")), "relu")
        with pytest.raises(LoweringError) as info:
            lower_network(broken)
        assert info.value.code == "AF3104"

    def test_output_size_mismatch(self):
        good = make_network([4, 3, 2])
        with pytest.raises(LoweringError) as info:
            lower_network(NetworkSpec(4, 5, good.layers, "relu"))
        assert info.value.code == "AF3104"
