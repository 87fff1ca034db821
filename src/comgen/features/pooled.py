"""Pooled image descriptors and Gaussian distances in NumPy, shared by the detector's global branch and the export
runtime (which runs without torch), so both score an image with the same arithmetic.

Why pooling over a grid as well as the whole image: the mean alone forgets where things are; a coarse grid keeps
which part of the image holds what, at a few times the width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def adaptive_avg_pool(x: np.ndarray, grid: int) -> np.ndarray:
    """``torch.nn.functional.adaptive_avg_pool2d`` of [B,C,h,w] to [B,C,grid,grid] (the same bins)."""
    h, w = x.shape[-2:]
    rows = [(i * h // grid, -(-(i + 1) * h // grid)) for i in range(grid)]
    cols = [(j * w // grid, -(-(j + 1) * w // grid)) for j in range(grid)]
    out = np.empty((*x.shape[:2], grid, grid), np.float64)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3), dtype=np.float64)
    return out


def pooled_descriptors(feats: Sequence[np.ndarray], scales: Sequence[int], grid: int) -> list[np.ndarray]:
    """Per chosen scale, [B, C x (1 + grid^2)] descriptors of [B,C,h,w] features: the whole-image mean, then the
    grid's cell means (row-major per channel); a backbone with fewer scales (tiny test models) gives its coarsest."""
    chosen = [s for s in scales if s < len(feats)] or [len(feats) - 1]
    out = []
    for s in chosen:
        f = np.asarray(feats[s], np.float32)
        parts = [f.mean(axis=(2, 3), dtype=np.float64)]
        if grid > 0:
            parts.append(adaptive_avg_pool(f, grid).reshape(len(f), -1))
        out.append(np.concatenate(parts, axis=1))
    return out


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Distances [B] of rows ``x`` [B, D] under a Gaussian (``mean`` [D], ``precision`` [D, D])."""
    d = np.asarray(x, np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, precision, d), 0.0))


def scale_distances(descriptors: Sequence[np.ndarray], means: Sequence[np.ndarray],
                    precisions: Sequence[np.ndarray]) -> np.ndarray:
    """[B, S] Mahalanobis distance of each image at each scale (one Gaussian per scale)."""
    return np.stack([mahalanobis(x, m, p) for x, m, p in zip(descriptors, means, precisions)], axis=1)


def standardised_distances(descriptors: Sequence[np.ndarray], means: Sequence[np.ndarray],
                           precisions: Sequence[np.ndarray], scale_mean: np.ndarray, scale_std: np.ndarray
                           ) -> np.ndarray:
    """[B] sum over scales of each scale's Mahalanobis distance, standardised by that scale's normal mean and
    spread (the global branch's raw score)."""
    return ((scale_distances(descriptors, means, precisions) - scale_mean) / scale_std).sum(axis=1)


def unpack_gaussians(arrays: Mapping[str, np.ndarray], n: int
                     ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """(means, precisions, scale_mean, scale_std) of ``n`` scales from the global branch's stored arrays (``mean<s>``,
    ``precision<s>``, ``scale_mean``, ``scale_std``). Raises KeyError naming a missing array and ValueError when the
    shapes disagree; the callers turn them into their own one-line errors."""
    means = [arrays[f"mean{s}"] for s in range(n)]
    precisions = [arrays[f"precision{s}"] for s in range(n)]
    scale_mean, scale_std = arrays["scale_mean"], arrays["scale_std"]
    if n < 1 or scale_mean.shape != (n,) or scale_std.shape != (n,) or \
            not all(m.ndim == 1 and p.shape == (len(m), len(m)) for m, p in zip(means, precisions)):
        raise ValueError("arrays of inconsistent shapes")
    return means, precisions, scale_mean, scale_std
