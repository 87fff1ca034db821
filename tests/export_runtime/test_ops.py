"""The NumPy mirrors of torch's resize, pooling, normalisation and blur agree with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comgen.export_runtime import ops
from comgen.tensor_ops import gaussian_blur

X = np.random.default_rng(0).normal(size=(2, 5, 7, 9)).astype(np.float32)


@pytest.mark.parametrize("size", [(16, 16), (3, 4), (7, 18), (64, 48)])
def test_resize_bilinear_matches_interpolate(size: tuple[int, int]) -> None:
    want = F.interpolate(torch.from_numpy(X), size=size, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(ops.resize_bilinear(X, size), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_avg_pool_same_matches_avg_pool2d(k: int) -> None:
    want = F.avg_pool2d(torch.from_numpy(X), k, stride=1, padding=k // 2, count_include_pad=False).numpy()
    np.testing.assert_allclose(ops.avg_pool_same(X, k), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("grid", [1, 2, 3, 4])
def test_adaptive_avg_pool_matches_torch(grid: int) -> None:
    want = F.adaptive_avg_pool2d(torch.from_numpy(X), grid).numpy()
    np.testing.assert_allclose(ops.adaptive_avg_pool(X, grid), want, atol=1e-6, rtol=0)


def test_unit_and_blur_match_torch() -> None:
    np.testing.assert_allclose(ops.unit(X, 1), F.normalize(torch.from_numpy(X), dim=1).numpy(), atol=1e-6)
    maps = X[:, 0] * 3
    for sigma in (0.25, 1.0, 2.5):
        np.testing.assert_allclose(ops.gaussian_blur(maps, sigma), gaussian_blur(torch.from_numpy(maps), sigma).numpy(),
                                   atol=1e-5)
