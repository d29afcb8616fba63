"""Training throughput of issue 11, side by side in one run: samples/s of one epoch.

The network is the reference 784-128-64-32-10 (relu hidden, softmax output, cross-entropy), trained
with Adam (lr 0.001) at batch 64 on one thread (threadpoolctl pins BLAS for every side), float32 data:

- af: `afc.train.train_network`, one epoch per call (what `af train` runs, without the file I/O);
- scikit-learn: `MLPClassifier(solver="adam", batch_size=64, alpha=0)`, one `partial_fit` (one epoch) per call;
- PyTorch on the CPU, when installed: the same layers, `torch.optim.Adam`, a plain loop over shuffled batches.

Targets: af >= 1.0x scikit-learn and >= 0.5x PyTorch. Rounds alternate the sides and report medians,
so drift on this shared machine hits every side alike. Run: ``.venv/bin/python benchmarks/train.py``
(``--rounds N --samples N`` to shorten or lengthen it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from afc.datasets import Dataset  # noqa: E402
from afc.spec import LayerSpec, NetworkSpec  # noqa: E402
from afc.train import TrainOptions, train_network  # noqa: E402

SIZES = [784, 128, 64, 32, 10]
BATCH = 64
RATE = 0.001


def make_data(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs in [0, 1) and labels that depend on them (a fixed random linear map)."""
    rng = np.random.default_rng(0)
    x = rng.random((samples, SIZES[0]), dtype=np.float32)
    labels = (x @ rng.standard_normal((SIZES[0], SIZES[-1])).astype(np.float32)).argmax(axis=1)
    return x, labels


def he_network() -> NetworkSpec:
    rng = np.random.default_rng(1)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(SIZES, SIZES[1:])):
        weight = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        layers.append(LayerSpec(i, weight, np.zeros(fan_out, np.float32), "relu"))
    return NetworkSpec(SIZES[0], SIZES[-1], tuple(layers), "relu", "softmax", RATE)


def af_side(x: np.ndarray, labels: np.ndarray) -> Callable[[], None]:
    network, dataset = he_network(), Dataset(x, np.eye(10, dtype=np.float32)[labels], "bench", "")
    options = TrainOptions(epochs=1, batch_size=BATCH, optimizer="adam", learning_rate=RATE, seed=0)
    return lambda: train_network(network, dataset, options=options)


def sklearn_side(x: np.ndarray, labels: np.ndarray) -> Callable[[], None]:
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(hidden_layer_sizes=tuple(SIZES[1:-1]), activation="relu", solver="adam", alpha=0.0,
                          batch_size=BATCH, learning_rate_init=RATE, shuffle=True, random_state=0)
    model.partial_fit(x[:BATCH], labels[:BATCH], classes=np.arange(10))  # builds the model (float32, as x)
    return lambda: model.partial_fit(x, labels)


def torch_side(x: np.ndarray, labels: np.ndarray) -> Callable[[], None] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list = []
    for fan_in, fan_out in zip(SIZES, SIZES[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))

    def epoch() -> None:
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), BATCH):
            rows = order[start : start + BATCH]
            optimizer.zero_grad()
            loss_fn(model(xt[rows]), yt[rows]).backward()
            optimizer.step()

    return epoch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=6400)
    args = parser.parse_args()
    x, labels = make_data(args.samples)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning after one epoch
        sides = {"af": af_side(x, labels), "scikit-learn": sklearn_side(x, labels), "pytorch": torch_side(x, labels)}
        sides = {name: run for name, run in sides.items() if run is not None}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, run in sides.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
    rates = {name: args.samples / statistics.median(values) for name, values in times.items()}
    print(f"one epoch of {'-'.join(map(str, SIZES))} (relu, softmax), Adam, batch {BATCH}, {args.samples} samples, "
          f"1 thread, median of {args.rounds}")
    for name, rate in rates.items():
        print(f"  {name:<13} {rate:>10,.0f} samples/s")
    print(f"  af / scikit-learn  {rates['af'] / rates['scikit-learn']:.2f}x   (target >= 1.0x)")
    if "pytorch" in rates:
        print(f"  af / pytorch       {rates['af'] / rates['pytorch']:.2f}x   (target >= 0.5x)")
    else:
        print("  af / pytorch       not measured: torch is not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
