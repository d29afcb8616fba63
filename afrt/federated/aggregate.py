"""The aggregation strategies of a federated round, as pure numpy functions (docs/federated.md).

Every strategy takes the clients' updates as ``(vector, examples)`` pairs, a vector being a
client's whole model flattened to one float array (`afrt.federated.local.flatten`), and returns
the aggregate vector. The definitions are the papers':

- FedAvg (McMahan et al. 2017): the mean weighted by example counts, ``sum n_k w_k / sum n_k``.
- FedProx (Li et al. 2020): aggregated as FedAvg; its proximal term ``mu/2 ||w - w_global||^2``
  lives in the clients' training (`afrt.federated.local.train_local`).
- Coordinate-wise median (Yin et al. 2018): the median of each coordinate (the mean of the two
  middle values for an even count), example counts ignored.
- beta-trimmed mean (Yin et al. 2018): per coordinate, drop the ``floor(beta n)`` largest and the
  ``floor(beta n)`` smallest values and average the rest; ``0 <= beta < 1/2``.
- Krum (Blanchard et al. 2017): the score of vector i is the sum of the squared distances to its
  ``n - f - 2`` nearest other vectors; the vector of least score wins. Defined for ``n > 2f + 2``
  only, and refused otherwise (AF6150).
- Multi-Krum (same paper): the ``m`` vectors of least Krum score, averaged with equal weights
  (Blanchard et al.'s definition; Flower's ``aggregate_krum`` weights them by example count).

Computed in float64 whatever the input dtype (a float32 sum of eight models loses digits that the
comparison with Flower's functions would see), returned as float64.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from afcore.errors import UsageError

__all__ = ["STRATEGIES", "aggregate", "check_strategy", "ensure_krum", "fedavg", "krum", "krum_scores", "median",
           "multi_krum", "trimmed_mean"]

#: strategy names `af federate start --strategy` takes
STRATEGIES = ("fedavg", "fedprox", "median", "trimmed-mean", "krum", "multi-krum")
#: beta of the trimmed mean when the caller gives none: it copes with up to beta*n attackers
DEFAULT_TRIM = 0.2

Updates = Sequence[tuple[np.ndarray, int]]


def _stack(updates: Updates) -> np.ndarray:
    if not updates:
        raise UsageError("no client updates to aggregate", code="AF6151",
                         hint="wait for at least one update (--min-clients, --round-timeout)")
    return np.stack([np.asarray(vector, dtype=np.float64).ravel() for vector, _ in updates])


def fedavg(updates: Updates) -> np.ndarray:
    """Return the FedAvg aggregate: the mean of the vectors weighted by their example counts.

    Args:
        updates: ``(vector, examples)`` per client; examples > 0.

    Returns:
        ``sum(n_k w_k) / sum(n_k)``, float64.

    Raises:
        UsageError: AF6151 without updates; AF6152 when an example count is not positive.
    """
    vectors = _stack(updates)
    counts = np.array([n for _, n in updates], dtype=np.float64)
    if (counts <= 0).any():
        raise UsageError("a client update claims no training examples", code="AF6152",
                         hint="every update must carry the positive number of examples it was trained on")
    return (counts @ vectors) / counts.sum()


def median(updates: Updates) -> np.ndarray:
    """Return the coordinate-wise median of the vectors (example counts ignored)."""
    return np.median(_stack(updates), axis=0)


def trimmed_mean(updates: Updates, beta: float = DEFAULT_TRIM) -> np.ndarray:
    """Return the coordinate-wise beta-trimmed mean.

    Args:
        updates: ``(vector, examples)`` per client (counts ignored).
        beta: the fraction cut from each side, ``0 <= beta < 0.5``; ``floor(beta n)`` values go.

    Raises:
        UsageError: AF6153 for a beta outside [0, 0.5).
    """
    if not 0.0 <= beta < 0.5:
        raise UsageError(f"the trimmed mean's beta must be in [0, 0.5), not {beta}", code="AF6153",
                         hint="beta is the fraction of values cut from each side of every coordinate")
    vectors = _stack(updates)
    n = len(vectors)
    cut = int(beta * n)
    ordered = np.sort(vectors, axis=0)
    return ordered[cut:n - cut].mean(axis=0)


def ensure_krum(n: int, f: int) -> None:
    """Refuse Krum for ``n <= 2f + 2`` (its guarantee needs ``n > 2f + 2``): AF6150."""
    if f < 0 or n <= 2 * f + 2:
        raise UsageError(f"Krum needs more than 2f + 2 = {2 * f + 2} updates for f = {f} Byzantine clients, "
                         f"and has {n}", code="AF6150",
                         hint=f"give at least {2 * f + 3} clients (--min-clients), or a smaller --byzantine")


def krum_scores(updates: Updates, f: int) -> np.ndarray:
    """Return each vector's Krum score: the sum of squared distances to its n - f - 2 nearest others.

    Raises:
        UsageError: AF6150 unless n > 2f + 2.
    """
    vectors = _stack(updates)
    n = len(vectors)
    ensure_krum(n, f)
    squares = np.einsum("ij,ij->i", vectors, vectors)
    distances = np.maximum(squares[:, None] + squares[None, :] - 2 * vectors @ vectors.T, 0.0)
    np.fill_diagonal(distances, np.inf)  # a vector is not its own neighbour
    nearest = np.sort(distances, axis=1)[:, : n - f - 2]
    return nearest.sum(axis=1)


def krum(updates: Updates, f: int) -> np.ndarray:
    """Return the Krum aggregate: the vector of least `krum_scores` (the first on a tie)."""
    return _stack(updates)[int(np.argmin(krum_scores(updates, f)))]


def multi_krum(updates: Updates, f: int, m: int | None = None) -> np.ndarray:
    """Return the Multi-Krum aggregate: the unweighted mean of the ``m`` vectors of least Krum score.

    Args:
        updates: ``(vector, examples)`` per client.
        f: the number of Byzantine clients tolerated.
        m: how many vectors to keep; None keeps ``n - f`` (Blanchard et al.'s choice in their tests).

    Raises:
        UsageError: AF6150 unless n > 2f + 2; AF6154 unless 1 <= m <= n.
    """
    scores = krum_scores(updates, f)
    n = len(scores)
    m = n - f if m is None else m
    if not 1 <= m <= n:
        raise UsageError(f"Multi-Krum keeps between 1 and {n} updates, not {m}", code="AF6154")
    keep = np.argsort(scores, kind="stable")[:m]
    return _stack(updates)[keep].mean(axis=0)


def check_strategy(strategy: str, *, clients: int, byzantine: int) -> None:
    """Refuse a federation its strategy cannot serve: an unknown name (AF6155), Krum with too few clients.

    Args:
        strategy: one of `STRATEGIES`.
        clients: the updates each round aggregates at least (``--min-clients``).
        byzantine: the attackers tolerated (``--byzantine``).

    Raises:
        UsageError: AF6155 for an unknown strategy, AF6150 for Krum/Multi-Krum with ``clients <= 2f + 2``.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy `{strategy}`", code="AF6155", hint=f"use one of {', '.join(STRATEGIES)}")
    if strategy in ("krum", "multi-krum"):
        ensure_krum(clients, byzantine)


def aggregate(strategy: str, updates: Updates, *, byzantine: int = 0, beta: float | None = None) -> np.ndarray:
    """Aggregate the updates with the named strategy.

    Args:
        strategy: one of `STRATEGIES`.
        updates: ``(vector, examples)`` per client.
        byzantine: f, for Krum and Multi-Krum; the trimmed mean cuts ``max(f/n, beta)`` when given.
        beta: the trimmed mean's fraction; None picks ``f / n`` when f > 0, else `DEFAULT_TRIM`.

    Returns:
        The aggregate vector, float64.

    Raises:
        UsageError: AF6150-AF6155 (see the strategies).
    """
    check_strategy(strategy, clients=len(updates), byzantine=byzantine)
    if strategy == "trimmed-mean" and beta is None:
        beta = min(byzantine / len(updates), 0.49) if byzantine and updates else DEFAULT_TRIM
    table: dict[str, Callable[[], np.ndarray]] = {
        "fedavg": lambda: fedavg(updates),
        "fedprox": lambda: fedavg(updates),
        "median": lambda: median(updates),
        "trimmed-mean": lambda: trimmed_mean(updates, beta),
        "krum": lambda: krum(updates, byzantine),
        "multi-krum": lambda: multi_krum(updates, byzantine),
    }
    return table[strategy]()
