"""Shared fixtures: random networks built as IR objects, and the compiled example bundles."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# pytest puts tests/ on sys.path for this conftest; tests/afc and tests/afcore would then shadow the
# real packages as namespace packages, so the repository root must come first.
sys.path.insert(0, str(ROOT))
from typing import Callable, Sequence

import numpy as np
import pytest

from afc.spec import LayerSpec, NetworkSpec

EXAMPLES = sorted((ROOT / "examples").glob("*.af"))


def build_network(
    sizes: Sequence[int],
    hidden: str = "relu",
    output: str = "linear",
    *,
    seed: int = 0,
    scale: float = 1.0,
) -> NetworkSpec:
    """Return a network with He-scaled random float32 weights; ``sizes`` = [input, hidden..., output]."""
    rng = np.random.default_rng(seed)
    layers = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        weight = rng.standard_normal((fan_out, fan_in)) * scale * np.sqrt(2.0 / fan_in)
        bias = rng.standard_normal(fan_out) * 0.1 * scale
        layers.append(LayerSpec(index, weight.astype(np.float32), bias.astype(np.float32), hidden))
    return NetworkSpec(sizes[0], sizes[-1], tuple(layers), hidden, output)


@pytest.fixture(scope="session")
def make_network() -> Callable[..., NetworkSpec]:
    """Factory fixture: ``make_network([in, h1, ..., out], hidden, output, seed=..)``."""
    return build_network


@pytest.fixture(scope="session")
def example_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Compile every file in examples/ once per session: example stem -> .afb path (in a temp dir)."""
    from afc.compile import compile_file

    out = tmp_path_factory.mktemp("example-bundles")
    return {path.stem: compile_file(path, output=out / f"{path.stem}.afb") for path in EXAMPLES}



def run_wasm(wasm: bytes, x: np.ndarray, output_size: int) -> np.ndarray:
    """Run a module per ABI v1 (docs/bundle.md) with wasmtime directly, in chunks of its max_batch."""
    import wasmtime

    store = wasmtime.Store()
    exports = wasmtime.Instance(store, wasmtime.Module(store.engine, wasm), []).exports(store)
    memory = exports["memory"]
    max_batch = exports["max_batch"](store)
    input_ptr, output_ptr = exports["input_ptr"](store), exports["output_ptr"](store)
    x = np.ascontiguousarray(x, dtype="<f4")
    outputs = []
    for start in range(0, len(x), max_batch):
        chunk = x[start : start + max_batch]
        memory.write(store, chunk.tobytes(), input_ptr)
        status = exports["infer"](store, len(chunk))
        assert status == 0, f"infer returned {status}"
        raw = memory.read(store, output_ptr, output_ptr + 4 * len(chunk) * output_size)
        outputs.append(np.frombuffer(raw, dtype="<f4").reshape(len(chunk), output_size))
    return np.concatenate(outputs)


@pytest.fixture(scope="session")
def wasm_runner() -> Callable[..., np.ndarray]:
    """``wasm_runner(wasm_bytes, x, output_size)`` runs a module with wasmtime per ABI v1."""
    return run_wasm


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """Keep the compiled-module cache of every test (and of the `af` subprocesses they start) out of
    the user's ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    patch.undo()
