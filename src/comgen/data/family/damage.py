"""Structural defects of the family: local damage that leaves every part in place, so no logical rule fires.

Why separate from the built-in benchmark's damage: here damage is bounded by the part it hits (a stain covers at
most part of one part, contamination is smaller than the part), so a part's median colour, count and size, which
the rules read, stay as they were. Texture categories take the same kinds plus a hole.
"""

from __future__ import annotations

import numpy as np

from comgen.data.synth import draw
from comgen.data.synth.base import components
from comgen.data.synth.draw import Canvas

OBJECT_DAMAGE: tuple[str, ...] = ("scratch", "crack", "stain", "contamination")
TEXTURE_DAMAGE: tuple[str, ...] = ("scratch", "crack", "stain", "contamination", "hole")
FOREIGN = ((70, 40, 120), (40, 120, 60), (30, 30, 30), (120, 170, 230), (200, 60, 40))


def _target(cv: Canvas, labels: tuple[int, ...]) -> tuple[np.ndarray, float, float, float]:
    """One part instance to damage (its mask, centre and radius), or the whole image for a texture."""
    parts = [c for t in labels for c in components(cv.labels == t, 12)] if labels else []
    if not parts:
        s = cv.size
        return np.ones((s, s), bool), cv.rng.uniform(0.2, 0.8), cv.rng.uniform(0.2, 0.8), 0.08
    m, _, _, area = parts[int(cv.rng.integers(len(parts)))]
    ys, xs = np.nonzero(draw.erode(m, 1) if draw.erode(m, 1).any() else m)
    k = int(cv.rng.integers(len(ys)))  # a point on the part itself (a ring's centre is not)
    return m, ys[k] / cv.size, xs[k] / cv.size, float(np.sqrt(area / np.pi) / cv.size)


def _line(cv: Canvas, x: float, y: float, length: float, jagged: bool) -> list[tuple[float, float]]:
    rng = cv.rng
    ang = rng.uniform(0, np.pi)
    n = 5 if jagged else 3
    pts = []
    for k in range(n):
        t = (k / (n - 1) - 0.5) * length
        wob = rng.normal(0, 0.18 * length / n) if jagged else rng.normal(0, 0.05 * length)
        pts.append((x + t * np.cos(ang) - wob * np.sin(ang), y + t * np.sin(ang) + wob * np.cos(ang)))
    return pts


def damage(cv: Canvas, kind: str, labels: tuple[int, ...]) -> np.ndarray:
    """Damage one part of ``labels`` (or the surface, for ``labels=()``) in place; returns the defect's region."""
    rng = cv.rng
    target, y, x, r = _target(cv, labels)
    r = max(r, 4.0 / cv.size)
    if kind in ("scratch", "crack"):
        jagged = kind == "crack"
        length = (1.2 if labels else 1.0) * r * rng.uniform(1.0, 1.6)
        mask = draw.polyline(cv, _line(cv, x, y, length, jagged), max(0.008 if jagged else 0.006, 1.2 / cv.size))
        if labels:
            mask &= draw.dilate(target, 1)
        if jagged:
            cv.img[mask] *= 0.3
        else:
            cv.img[mask] = cv.img[mask] * 0.5 + 110
        return mask
    if kind == "stain":
        mask = draw.ellipse(cv, x, y, 0.55 * r, 0.35 * r, rng.uniform(0, 180)) & target
        cv.img[mask] *= np.asarray([0.55, 0.45, 0.35], np.float32)
        return mask
    if kind == "contamination":
        mask = draw.blob(cv, x + rng.uniform(-0.5, 0.5) * r, y + rng.uniform(-0.5, 0.5) * r, 0.5 * r)
        colour = draw.jitter_color(rng, FOREIGN[int(rng.integers(len(FOREIGN)))], 10)
        labels_before = cv.labels.copy()
        cv.paint(mask, colour, None, texture=0.08)
        cv.labels[:] = labels_before
        return mask
    if kind == "hole":
        mask = draw.blob(cv, x, y, rng.uniform(0.025, 0.045))
        cv.img[mask] = np.asarray([18, 18, 20], np.float32)
        return mask
    raise ValueError(f"unknown structural defect {kind!r}")
