"""The aggregation strategies against Flower's (flwr.server.strategy.aggregate), an independent reference."""

from __future__ import annotations

import numpy as np
import pytest

from afcore.errors import UsageError
from afrt.federated import aggregate as agg

flwr_agg = pytest.importorskip("flwr.server.strategy.aggregate")

SHAPES = [(7, 5), (7,), (3, 7), (3,)]


def _clients(n: int, seed: int, *, attackers: int = 0) -> list[tuple[list[np.ndarray], int]]:
    """Per-layer float32 arrays per client (as Flower's NDArrays) with differing example counts."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = 25.0 if i < attackers else 1.0
        layers = [(rng.normal(size=shape) * scale).astype(np.float32) for shape in SHAPES]
        out.append((layers, int(rng.integers(5, 200))))
    return out


def _flat(layers: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(layer, dtype=np.float64).ravel() for layer in layers])


def _ours(clients) -> list[tuple[np.ndarray, int]]:
    return [(_flat(layers), n) for layers, n in clients]


class TestAgainstFlower:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_fedavg(self, seed):
        clients = _clients(8, seed)
        np.testing.assert_allclose(agg.fedavg(_ours(clients)), _flat(flwr_agg.aggregate(clients)), atol=1e-6)
        np.testing.assert_allclose(agg.aggregate("fedprox", _ours(clients)), agg.fedavg(_ours(clients)))

    @pytest.mark.parametrize("n", [7, 8])
    def test_median(self, n):
        clients = _clients(n, n, attackers=2)
        np.testing.assert_allclose(agg.median(_ours(clients)), _flat(flwr_agg.aggregate_median(clients)), atol=1e-6)

    @pytest.mark.parametrize(("n", "beta"), [(8, 0.25), (8, 0.1), (10, 0.2), (5, 0.0)])
    def test_trimmed_mean(self, n, beta):
        clients = _clients(n, 3, attackers=2)
        expected = _flat(flwr_agg.aggregate_trimmed_avg(clients, beta))
        np.testing.assert_allclose(agg.trimmed_mean(_ours(clients), beta), expected, atol=1e-6)

    @pytest.mark.parametrize(("n", "f"), [(8, 2), (7, 2), (5, 1)])
    def test_krum(self, n, f):
        clients = _clients(n, 4 + n, attackers=f)
        expected = _flat(flwr_agg.aggregate_krum(clients, f, 0))
        np.testing.assert_allclose(agg.krum(_ours(clients), f), expected, atol=1e-6)
        assert agg.krum_scores(_ours(clients), f)[:f].min() > agg.krum_scores(_ours(clients), f)[f:].max()

    def test_multi_krum_selects_as_flower(self):
        # Flower averages Multi-Krum's picks weighted by example counts; Blanchard et al. average
        # them with equal weights. With equal counts the two agree.
        clients = [(layers, 50) for layers, _ in _clients(9, 5, attackers=2)]
        expected = _flat(flwr_agg.aggregate_krum(clients, 2, 5))
        np.testing.assert_allclose(agg.multi_krum(_ours(clients), 2, 5), expected, atol=1e-6)

    def test_multi_krum_is_unweighted(self):
        clients = _clients(9, 6, attackers=2)
        ours = _ours(clients)
        keep = np.argsort(agg.krum_scores(ours, 2))[:7]
        np.testing.assert_allclose(agg.multi_krum(ours, 2), np.mean([ours[i][0] for i in keep], axis=0))
        assert set(keep) == set(range(2, 9))  # the two attackers are left out


class TestRefusals:
    @pytest.mark.parametrize(("n", "f"), [(6, 2), (4, 1), (2, 0)])
    def test_krum_needs_more_than_2f_plus_2(self, n, f):
        with pytest.raises(UsageError) as caught:
            agg.aggregate("krum", _ours(_clients(n, 0)), byzantine=f)
        assert caught.value.code == "AF6150" and f"{2 * f + 3}" in caught.value.hint
        with pytest.raises(UsageError, match="Krum needs"):
            agg.check_strategy("multi-krum", clients=n, byzantine=f)

    def test_other_refusals(self):
        with pytest.raises(UsageError) as caught:
            agg.fedavg([])
        assert caught.value.code == "AF6151"
        with pytest.raises(UsageError) as caught:
            agg.fedavg([(np.ones(3), 0)])
        assert caught.value.code == "AF6152"
        with pytest.raises(UsageError) as caught:
            agg.trimmed_mean(_ours(_clients(4, 0)), 0.5)
        assert caught.value.code == "AF6153"
        with pytest.raises(UsageError) as caught:
            agg.check_strategy("mean", clients=8, byzantine=0)
        assert caught.value.code == "AF6155"

    def test_trimmed_mean_default_cuts_f_per_side(self):
        ours = _ours(_clients(8, 9, attackers=2))
        np.testing.assert_allclose(agg.aggregate("trimmed-mean", ours, byzantine=2), agg.trimmed_mean(ours, 0.25))
