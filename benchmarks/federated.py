"""Federated learning on the digits data (issue 14): robustness table and the cost of a real round.

(1) The table: scikit-learn's digits (8x8, 64 inputs, 1797 records) split 80/20 into training and a
    held-out set; the training part split across 8 participants, IID and non-IID (Dirichlet alpha per
    class, Hsu et al. 2019). Held-out accuracy of the 64-32-10 relu/softmax network after R rounds
    for each strategy, with no attacker and with 2 of the 8 attacking (sign-flip, gaussian), next
    to training on all the data at once (the same SGD, R x E epochs). This part is an in-process
    simulation: it calls the same local training (`afrt.federated.local.train_local`), attacks and
    aggregation (`afrt.federated.aggregate.aggregate`) as the workers, without Redis and without
    the validation vote (every proposal is adopted, so an attack shows in the accuracy instead of
    in rejected rounds).
(2) A real federation on Redis: a private redis-server, N workers (`af run --bus --local-data`)
    and `af federate start`: seconds per round and bytes on the bus per round (Redis's
    total_net_input_bytes + total_net_output_bytes over the rounds, heartbeats included).

Run: ``.venv/bin/python benchmarks/federated.py [--rounds R] [--seed S] [--redis-workers N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from afrt.federated import local
from afrt.federated.aggregate import aggregate

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
sys.path += [str(ROOT / "tests"), str(ROOT / "tests" / "afrt")]

NETWORK = local.Network((64, 32, 10), "relu", "softmax")
STRATEGIES = ("fedavg", "fedprox", "median", "trimmed-mean", "krum", "multi-krum")
ATTACKS = (None, "sign-flip", "gaussian")
CLIENTS, ATTACKERS = 8, 2
LEARNING_RATE, LOCAL_EPOCHS, MU = 0.05, 5, 0.01


def digits(seed: int) -> tuple[local.LocalData, local.LocalData, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16).astype(np.float32), d.target
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    onehot = np.eye(10, dtype=np.float32)
    train, test = order[:cut], order[cut:]
    return local.LocalData(x[train], onehot[y[train]]), local.LocalData(x[test], onehot[y[test]]), y[train]


def split(labels: np.ndarray, kind: str, rng: np.random.Generator, alpha: float = 0.5) -> list[np.ndarray]:
    """Return the record indices of each client: IID, or per class Dirichlet(alpha) shares."""
    if kind == "iid":
        return np.array_split(rng.permutation(len(labels)), CLIENTS)
    parts: list[list[int]] = [[] for _ in range(CLIENTS)]
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet([alpha] * CLIENTS)
        for k, chunk in enumerate(np.split(members, (np.cumsum(shares)[:-1] * len(members)).astype(int))):
            parts[k] += chunk.tolist()
    return [np.array(p) for p in parts]


def initial(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    layers = [(rng.normal(0, np.sqrt(2 / i), (o, i)).astype(np.float32), np.zeros(o, np.float32))
              for i, o in zip(NETWORK.sizes, NETWORK.sizes[1:])]
    return local.flatten(layers)


def federate(shards: list[local.LocalData], test: local.LocalData, strategy: str, attack: str | None, rounds: int,
             seed: int) -> float:
    rng = np.random.default_rng(seed)
    model = initial(seed)
    for _ in range(rounds):
        updates = []
        for k, shard in enumerate(shards):
            bad = attack is not None and k < ATTACKERS
            w, _ = local.train_local(model, NETWORK, shard, epochs=LOCAL_EPOCHS, learning_rate=LEARNING_RATE,
                                     mu=MU if strategy == "fedprox" else 0.0, rng=rng)
            updates.append((local.apply_attack(attack, model, w, rng) if bad else w, len(shard)))
        model = aggregate(strategy, updates, byzantine=ATTACKERS).astype(np.float32)
    return local.accuracy(model, NETWORK, test) if np.isfinite(model).all() else float("nan")


def table(rounds: int, seed: int) -> None:
    train, test, labels = digits(seed)
    central, _ = local.train_local(initial(seed), NETWORK, train, epochs=rounds * LOCAL_EPOCHS,
                                   learning_rate=LEARNING_RATE, rng=np.random.default_rng(seed))
    print(f"digits: {len(train)} training records on {CLIENTS} participants ({ATTACKERS} attacking where "
          f"shown), {len(test)} held out; {rounds} rounds of {LOCAL_EPOCHS} local epoch(s), SGD lr "
          f"{LEARNING_RATE}, batch {local.BATCH_SIZE}")
    print(f"all the data at once ({rounds * LOCAL_EPOCHS} epochs): held-out accuracy {local.accuracy(central, NETWORK, test):.3f}\n")
    print("| split | strategy | no attack | sign-flip (2 of 8) | gaussian (2 of 8) |")
    print("|---|---|---|---|---|")
    for kind in ("iid", "dirichlet-0.5"):
        parts = split(labels, "iid" if kind == "iid" else "dirichlet", np.random.default_rng(seed + 1))
        shards = [local.LocalData(train.inputs[p], train.targets[p]) for p in parts]
        for strategy in STRATEGIES:
            cells = [federate(shards, test, strategy, attack, rounds, seed) for attack in ATTACKS]
            print(f"| {kind} | {strategy} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)


def on_redis(workers: int, rounds: int, seed: int) -> None:
    import json

    from federated_kit import finish, make_federation_files, start_federation, start_member, stop_members, wait_for
    from redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="af-fed-bench-") as tmp:
        agent, shards, test = make_federation_files(Path(tmp) / "data", workers, seed=seed)
        with RedisServer(Path(tmp) / "redis") as server:
            members = [start_member(server.url, agent, "bench", s, test) for s in shards]
            try:
                import redis

                client = redis.Redis.from_url(server.url)
                wait_for(lambda: len(client.keys("af:bench:fed:fdigits:alive:*")) == workers, what="workers")
                before = client.info("stats")
                started = time.perf_counter()
                code, out, err = finish(start_federation(server.url, "bench", "--rounds", str(rounds),
                                                         "--min-clients", str(workers), "--round-timeout", "30"))
                seconds = time.perf_counter() - started
                after = client.info("stats")
                assert code == 0, err
                rows = [json.loads(line) for line in out.splitlines()]
                moved = sum(after[k] - before[k] for k in ("total_net_input_bytes", "total_net_output_bytes"))
                print(f"\nRedis: {workers} workers, {rounds} rounds of fedavg: {seconds / rounds:.3f} s/round, "
                      f"{moved / rounds / 1024:.1f} KiB on the bus per round (model {NETWORK.size * 4 / 1024:.1f} "
                      f"KiB); held-out accuracy by round: "
                      + ", ".join(f"{r['validation_accuracy']:.3f}" for r in rows))
                client.close()
            finally:
                stop_members(*members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redis-workers", type=int, default=4)
    parser.add_argument("--redis-rounds", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    table(args.rounds, args.seed)
    print(f"\n(simulation: {time.perf_counter() - started:.1f} s)")
    if args.redis_workers:
        on_redis(args.redis_workers, args.redis_rounds, args.seed)


if __name__ == "__main__":
    main()
