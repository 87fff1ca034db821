"""Random-grain surfaces of the family: no layout, no parts, structural defects only.

Why: on a surface whose grain never repeats (multicrystalline solar cells, fabric) no reference image aligns
with the test image, which is the case where comparing an image with its nearest normal images fails and a patch
memory is needed. ``grain`` draws Voronoi crystals of random brightness; ``weave`` draws a jittered woven pattern.
"""

from __future__ import annotations

import cv2
import numpy as np

from comgen.data.family.spec import FamilySpec
from comgen.data.synth.draw import Canvas


def _grain(cv: Canvas, spec: FamilySpec) -> None:
    rng, s = cv.rng, cv.size
    n = int(rng.integers(70, 140))
    seeds = rng.uniform(0, s, (n, 2)).astype(np.float32)
    step = 2 if s > 96 else 1  # nearest seed on a coarser grid, then nearest-neighbour upsampled
    g = np.arange(0, s, step, dtype=np.float32)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    owner = np.argmin(d, axis=-1).astype(np.int32)
    owner = cv2.resize(owner.astype(np.float32), (s, s), interpolation=cv2.INTER_NEAREST).astype(np.int32)
    level = rng.normal(1.0, 0.16, n).astype(np.float32)
    edge = cv2.morphologyEx(owner.astype(np.float32), cv2.MORPH_GRADIENT, np.ones((2, 2), np.uint8)) > 0
    shade = level[owner] * np.where(edge, 0.85, 1.0).astype(np.float32)
    cv.img *= shade[:, :, None]


def _weave(cv: Canvas, spec: FamilySpec) -> None:
    rng, s = cv.rng, cv.size
    period = s / rng.uniform(26, 34)
    axis = np.arange(s, dtype=np.float32)
    wob_y = np.cumsum(rng.normal(0, 0.15, s)).astype(np.float32)
    wob_x = np.cumsum(rng.normal(0, 0.15, s)).astype(np.float32)
    warp = np.sin(2 * np.pi * (axis[None, :] + wob_y[:, None]) / period)
    weft = np.sin(2 * np.pi * (axis[:, None] + wob_x[None, :]) / period)
    over = (np.floor((axis[:, None] + wob_x[None, :]) / period) + np.floor((axis[None, :] + wob_y[:, None]) / period)) % 2
    pattern = np.where(over > 0, warp, weft)
    slub = cv2.GaussianBlur(rng.normal(0, 1, (s, s)).astype(np.float32), (0, 0), s / 40)
    cv.img *= (1.0 + 0.18 * pattern + 0.6 * slub / max(float(np.abs(slub).max()), 1e-6) * 0.1)[:, :, None]


def render_texture(spec: FamilySpec, rng: np.random.Generator, size: int) -> Canvas:
    """A fresh surface of the category's kind; every pixel has the one part label (the surface)."""
    cv = Canvas(size, rng, spec.background, texture=0.03)
    (_grain if spec.layout == "grain" else _weave)(cv, spec)
    cv.labels[:] = spec.parts[0].label
    return cv
