"""NumPy mirrors of the few torch tensor operations the scoring path uses.

Why mirrored formula by formula (not a library resize): the deployed scores must equal ``comgen predict``'s within
1e-3, and class maps are argmins, so a resize that rounds differently flips pixels near a class boundary. Each
function names the torch call it reproduces; all work in float32 like the torch path.
"""

from __future__ import annotations

import numpy as np


def _source_index(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (low index, high index, low weight, high weight), as torch's ``upsample_bilinear2d`` with
    ``align_corners=False`` computes them (``area_pixel_compute_source_index``, clamped at 0)."""
    scale = np.float32(size_in) / np.float32(size_out)
    src = scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = src.astype(np.int64)
    hi = lo + (lo < size_in - 1)
    w_hi = (src - lo.astype(np.float32)).astype(np.float32)
    return lo, hi, (np.float32(1.0) - w_hi).astype(np.float32), w_hi


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` over the last two axes of ``x``."""
    x = np.asarray(x, np.float32)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.copy()
    y0, y1, hy0, hy1 = _source_index(h, size[0])
    x0, x1, wx0, wx1 = _source_index(w, size[1])
    rows0, rows1 = x[..., y0, :], x[..., y1, :]
    top = wx0 * rows0[..., x0] + wx1 * rows0[..., x1]
    bottom = wx0 * rows1[..., x0] + wx1 * rows1[..., x1]
    return (hy0[:, None] * top + hy1[:, None] * bottom).astype(np.float32)


def avg_pool_same(x: np.ndarray, k: int) -> np.ndarray:
    """``F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)`` over the last two axes."""
    if k <= 1:
        return np.asarray(x, np.float32)
    p = k // 2
    h, w = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)]
    xp = np.pad(np.asarray(x, np.float32), pad)
    ones = np.pad(np.ones((h, w), np.float32), p)
    total = np.zeros(x.shape, np.float32)
    count = np.zeros((h, w), np.float32)
    for dy in range(k):
        for dx in range(k):
            total += xp[..., dy:dy + h, dx:dx + w]
            count += ones[dy:dy + h, dx:dx + w]
    return total / count


def adaptive_avg_pool(x: np.ndarray, grid: int) -> np.ndarray:
    """``F.adaptive_avg_pool2d(x, grid)`` of [B,C,h,w]: bin i spans floor(i*h/g) .. ceil((i+1)*h/g)."""
    h, w = x.shape[-2:]
    out = np.empty((*x.shape[:-2], grid, grid), np.float32)
    for i in range(grid):
        ys, ye = (i * h) // grid, -((-(i + 1) * h) // grid)
        for j in range(grid):
            xs, xe = (j * w) // grid, -((-(j + 1) * w) // grid)
            out[..., i, j] = x[..., ys:ye, xs:xe].mean(axis=(-2, -1))
    return out


def unit(x: np.ndarray, axis: int, eps: float = 1e-12) -> np.ndarray:
    """``F.normalize(x, dim=axis)``: ``x`` over its Euclidean norm along ``axis``, the norm floored at ``eps``."""
    n = np.sqrt((x * x).sum(axis=axis, keepdims=True))
    return (x / np.maximum(n, np.float32(eps))).astype(np.float32)


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """``comgen.tensor_ops.gaussian_blur``: separable Gaussian blur of [B,H,W] maps with replicate padding."""
    radius = max(1, int(round(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    g = np.exp(-(t ** 2) / np.float32(2 * sigma ** 2)).astype(np.float32)
    g = g / g.sum()
    h, w = x.shape[-2:]
    xp = np.pad(np.asarray(x, np.float32), [(0, 0), (0, 0), (radius, radius)], mode="edge")
    y = sum(g[i] * xp[..., i:i + w] for i in range(len(g)))
    yp = np.pad(y, [(0, 0), (radius, radius), (0, 0)], mode="edge")
    return np.asarray(sum(g[i] * yp[:, i:i + h, :] for i in range(len(g))), np.float32)
