"""Online learning benchmarks (`update_weights`, `Agent.set_weights`), measured side by side in one run.

Run: ``.venv/bin/python benchmarks/online.py`` (about 20 s).

- `measure_learning`: records/s of `af run`'s engine (`afrt.run_jsonl`, one replica) on 1,200 digits records
  (64-24-10 relu/softmax, Adam) with a target each, against the same records without targets (the baseline,
  measured in the same run), for every=1, 8, 32, on both backends: the ratio is what learning costs.
- `measure_set_weights`: ms per `Agent.set_weights` on the reference net 784-128-64-32-10, both backends.
"""

from __future__ import annotations

import asyncio
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "afrt"))

import afrt  # noqa: E402
from learning_kit import digits, initial_layers, labelled_lines, learning_bundle  # noqa: E402

#: the reference network of docs and issue 3
REFERENCE_SIZES = (784, 128, 64, 32, 10)


def _seconds(bundle: Path, backend: str, lines: bytes, cache: str) -> float:
    best = float("inf")
    for _ in range(3):
        agent = afrt.load(bundle, backend=backend, cache_dir=cache)
        started = time.perf_counter()
        asyncio.run(afrt.run_jsonl(agent, io.BytesIO(lines), io.BytesIO(), afrt.RunOptions()))
        best = min(best, time.perf_counter() - started)
    return best


def measure_learning(directory: Path) -> None:
    x, y, _, _ = digits()
    labelled = labelled_lines(x, [int(v) for v in y])
    plain = labelled_lines(x, [None] * len(x))
    for every in (1, 8, 32):
        learn = f'update_weights(learning_rate=0.01, every={every}, optimizer="adam")'
        bundle = learning_bundle(directory, (64, 24, 10), learn=learn, name=f"every{every}")
        for backend in ("onnx", "wasm"):
            base = _seconds(bundle, backend, plain, str(directory / "cache"))
            learning = _seconds(bundle, backend, labelled, str(directory / "cache"))
            print(f"every={every:<3} {backend:4}  without targets {len(x) / base:>9,.0f} rec/s   "
                  f"learning {len(x) / learning:>9,.0f} rec/s   learning/without {base / learning:.2f}")


def measure_set_weights(directory: Path) -> None:
    bundle = learning_bundle(directory, REFERENCE_SIZES, name="reference")
    layers = initial_layers(REFERENCE_SIZES, seed=1)
    for backend in ("onnx", "wasm"):
        agent = afrt.load(bundle, backend=backend, cache_dir=str(directory / "cache"))
        agent.set_weights(layers)
        started, n = time.perf_counter(), 20
        for _ in range(n):
            agent.set_weights(layers)
        print(f"set_weights {'-'.join(map(str, REFERENCE_SIZES))} {backend:4}  "
              f"{(time.perf_counter() - started) / n * 1e3:.2f} ms")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="af-bench-online-") as tmp:
        measure_learning(Path(tmp))
        measure_set_weights(Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
