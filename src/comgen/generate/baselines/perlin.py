"""Vectorised 2-D Perlin noise, the mask source of the DRAEM-style baseline.

Why our own: DRAEM's reference ``rand_perlin_2d_np`` needs the image size to be a multiple of the lattice
resolution; this version evaluates the gradient lattice at arbitrary pixel coordinates with pure numpy
broadcasting (no Python loop over pixels), so any working resolution (32 px in tests, 256 px by default) works.
"""

from __future__ import annotations

import math

import numpy as np

from comgen.errors import InputError


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic interpolant: C2-continuous, so the noise has no visible lattice creases."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient noise of ``shape`` (H, W) with ``res`` (rows, cols) lattice cells; values roughly in [-1, 1]."""
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h < 1 or w < 1 or ry < 1 or rx < 1:
        raise InputError("perlin_noise", f"shape {shape} and res {res} must be positive")
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    grad_y, grad_x = np.sin(angles), np.cos(angles)
    ys = np.arange(h, dtype=np.float64) * (ry / h)
    xs = np.arange(w, dtype=np.float64) * (rx / w)
    yi, xi = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(oy: int, ox: int) -> np.ndarray:
        gy = grad_y[yi[:, None] + oy, xi[None, :] + ox]
        gx = grad_x[yi[:, None] + oy, xi[None, :] + ox]
        return gy * (fy - oy) + gx * (fx - ox)

    u, v = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - v) + corner(0, 1) * v
    bottom = corner(1, 0) * (1 - v) + corner(1, 1) * v
    return (math.sqrt(2.0) * (top * (1 - u) + bottom * u)).astype(np.float32)


def perlin_mask(
    size: int,
    rng: np.random.Generator,
    scale_exp: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    rotate: bool = True,
    min_cell: int = 4,
) -> tuple[np.ndarray, dict[str, float]]:
    """DRAEM's anomaly-shape sampler: threshold Perlin noise with random per-axis scale 2**k, randomly rotated.

    Returns the boolean mask and the parameters used (recorded in the manifest). The lattice is capped so a cell
    stays at least ``min_cell`` pixels wide, which keeps tiny test images from turning into salt noise.
    """
    import cv2

    lo, hi = int(scale_exp[0]), int(scale_exp[1])
    if hi <= lo:
        hi = lo + 1
    cap = max(1, size // max(1, min_cell))
    ry = min(2 ** int(rng.integers(lo, hi)), cap)
    rx = min(2 ** int(rng.integers(lo, hi)), cap)
    noise = perlin_noise((size, size), (ry, rx), rng)
    angle = float(rng.uniform(-90.0, 90.0)) if rotate else 0.0
    if angle:
        mat = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, 1.0)
        noise = cv2.warpAffine(noise, mat, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return noise > threshold, {"perlin_res_y": ry, "perlin_res_x": rx, "perlin_angle": angle,
                               "perlin_threshold": float(threshold)}
