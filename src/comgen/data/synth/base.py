"""Shared pieces of the synthetic categories: the rendered scene record, structural defects, rule helpers.

Why structural defects are shared: they are surface damage on one object (scratch, contamination,
stain) and look the same whatever the scene; logical defects are the per-category part (categories.py).
Structural defects never change the truth label map (the parts are all still there, only damaged), so
count/placement rules stay silent on them; a colour rule may still fire when contamination covers an item.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from comgen.data.synth import draw
from comgen.data.synth.draw import Canvas

STRUCTURAL: tuple[str, ...] = ("scratch", "contamination", "stain")


@dataclass
class Scene:
    """One rendered image with its truth label map and ground-truth regions (one mask file each)."""

    image: np.ndarray  # HxWx3 uint8
    labels: np.ndarray  # HxW uint8 part labels
    defect: str | None = None
    regions: list[np.ndarray] = field(default_factory=list)  # HxW bool, one GT mask file each


def add_structural(cv: Canvas, kind: str, item_labels: tuple[int, ...]) -> np.ndarray:
    """Damage one object of ``item_labels`` in place; returns the defect's region (bool mask)."""
    rng = cv.rng
    target = np.isin(cv.labels, item_labels)
    if not target.any():
        target = cv.labels > 0
    ys, xs = np.nonzero(target)
    i = int(rng.integers(len(ys)))
    x, y = xs[i] / cv.size, ys[i] / cv.size
    if kind == "scratch":
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.08, 0.14)
        dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        bend = rng.normal(0, 0.015, 2)
        pts = [(x - dx, y - dy), (x + bend[0], y + bend[1]), (x + dx, y + dy)]
        mask = draw.polyline(cv, pts, max(0.012, 1.5 / cv.size))
        dark = rng.random() < 0.6
        cv.img[mask] = cv.img[mask] * (0.35 if dark else 1.0) + (0 if dark else 90)
        return mask
    if kind == "contamination":
        mask = draw.blob(cv, x, y, rng.uniform(0.03, 0.05))
        palette = [(70, 40, 120), (40, 120, 60), (30, 30, 30), (120, 170, 230)]
        col = draw.jitter_color(rng, palette[int(rng.integers(len(palette)))], 10)
        cv.paint(mask, col, None, texture=0.08)
        return mask
    if kind == "stain":
        mask = draw.ellipse(cv, x, y, rng.uniform(0.03, 0.05), rng.uniform(0.02, 0.035), rng.uniform(0, 180))
        mask &= target
        if mask.sum() < 4:
            mask = draw.circle(cv, x, y, 0.03)
        cv.img[mask] *= np.asarray([0.55, 0.45, 0.35], np.float32)
        return mask
    raise ValueError(f"unknown structural defect {kind!r}")


def components(mask: np.ndarray, min_area: float) -> list[tuple[np.ndarray, float, float, int]]:
    """Connected components of a bool mask as (mask, cy, cx, area), dropping specks below ``min_area``."""
    n, lab, stats, cent = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area >= min_area:
            out.append((lab == i, float(cent[i, 1]), float(cent[i, 0]), area))
    return out


def median_rgb(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Robust colour of a region (median, so blurred boundary pixels do not matter)."""
    inner = draw.erode(mask, 1)
    use = inner if inner.sum() >= 6 else mask
    return np.median(image[use].reshape(-1, 3), axis=0)


def hue_sat(rgb: np.ndarray) -> tuple[float, float]:
    """OpenCV hue (0..180) and saturation (0..255) of one RGB colour."""
    hsv = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8).reshape(1, 1, 3), cv2.COLOR_RGB2HSV)[0, 0]
    return float(hsv[0]), float(hsv[1])


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 180
    return min(d, 180 - d)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) inclusive bounds of a mask, or None when empty."""
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if len(ys) == 0:
        return None
    return int(ys[0]), int(xs[0]), int(ys[-1]), int(xs[-1])


def color_rule(labels: np.ndarray, image: np.ndarray, label: int, name: str, ref: tuple[float, float, float],
               min_area: float) -> list[str]:
    """Every item of part ``label`` keeps its colour: hue for coloured parts, low saturation for grey/black ones.

    Why hue and saturation: they survive the benchmark's lighting ramp and colour gain, while an edit that
    recolours a part (a logical anomaly) moves them far.
    """
    ref_hue, ref_sat = hue_sat(np.asarray(ref, np.float32))
    msgs = []
    for m, cy, cx, _ in components(labels == label, min_area):
        hue, sat = hue_sat(median_rgb(image, m))
        if ref_sat >= 80:
            wrong = hue_distance(hue, ref_hue) > 12 or sat < 0.5 * ref_sat
        else:
            wrong = sat > max(ref_sat + 60, 110)  # tiny grey items pick up neighbours' colour through blur
        if wrong:
            msgs.append(f"{name} at ({cy / labels.shape[0]:.2f}, {cx / labels.shape[1]:.2f}) has the wrong colour")
    return msgs
