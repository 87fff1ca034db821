"""Pooled descriptors and Gaussian distances in NumPy: the same bins as torch's adaptive pooling, the same distance
as scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf

from comgen.features.pooled import (
    adaptive_avg_pool,
    mahalanobis,
    pooled_descriptors,
    scale_distances,
    standardised_distances,
)


@pytest.mark.parametrize(("h", "w", "grid"), [(8, 8, 2), (7, 5, 2), (9, 11, 3), (3, 3, 4)])
def test_adaptive_pool_matches_torch(h: int, w: int, grid: int) -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, h, w)).astype(np.float32)
    want = F.adaptive_avg_pool2d(torch.from_numpy(x), grid).numpy()
    np.testing.assert_allclose(adaptive_avg_pool(x, grid), want, atol=1e-6)


def test_descriptors_hold_the_mean_then_the_grid_and_fall_back_to_the_coarsest_scale() -> None:
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(4, 3, 8, 8)).astype(np.float32), rng.normal(size=(4, 5, 4, 4)).astype(np.float32)]
    d = pooled_descriptors(feats, (0, 1), 2)
    assert [x.shape for x in d] == [(4, 3 * 5), (4, 5 * 5)]
    np.testing.assert_allclose(d[1][:, :5], feats[1].mean(axis=(2, 3)), atol=1e-6)
    only = pooled_descriptors(feats, (7,), 0)  # a tiny backbone without that scale: its coarsest one
    assert len(only) == 1 and only[0].shape == (4, 5)


def test_mahalanobis_is_scikit_learns_distance() -> None:
    x = np.random.default_rng(2).normal(size=(50, 6))
    lw = LedoitWolf().fit(x)
    q = x[:5] + 1.0
    np.testing.assert_allclose(mahalanobis(q, lw.location_, lw.precision_) ** 2, lw.mahalanobis(q), rtol=1e-9)


def test_standardised_distances_weigh_every_scale_alike() -> None:
    rng = np.random.default_rng(3)
    means = [np.zeros(2), np.zeros(3)]
    precisions = [np.eye(2), np.eye(3) * 100.0]  # the second scale's distances are ten times wider
    desc = [rng.normal(size=(200, 2)), rng.normal(size=(200, 3))]
    d = scale_distances(desc, means, precisions)
    z = standardised_distances(desc, means, precisions, d.mean(0), d.std(0))
    assert abs(z.mean()) < 1e-9
    assert np.corrcoef(z, d[:, 0])[0, 1] > 0.5 and np.corrcoef(z, d[:, 1])[0, 1] > 0.5
