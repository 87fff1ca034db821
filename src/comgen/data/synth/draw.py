"""Scene drawing for the synthetic benchmark: shapes painted into an image and its part-label map at once.

Why paint both together: the truth label map must match the pixels exactly, so every shape is rasterised
once into a boolean mask (OpenCV) and that mask colours the image and labels the parts. Nuisance
(lighting gradient, colour gain, noise, blur) is applied to the image only, at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Color = tuple[float, float, float]


class Canvas:
    """A square float RGB image plus a uint8 part-label map, in pixel units of ``size``."""

    def __init__(self, size: int, rng: np.random.Generator, background: Color, texture: float = 0.04) -> None:
        self.size = size
        self.rng = rng
        self.img = np.empty((size, size, 3), np.float32)
        self.img[:] = jitter_color(rng, background, 6)
        self.img *= smooth_noise(rng, size, texture)[:, :, None]
        self.labels = np.zeros((size, size), np.uint8)

    def px(self, v: float) -> int:
        """Normalised length -> pixels (at least 1)."""
        return max(1, int(round(v * self.size)))

    def pt(self, x: float, y: float) -> tuple[int, int]:
        """Normalised point -> integer pixel (x, y) for OpenCV."""
        return int(round(x * self.size)), int(round(y * self.size))

    def blank(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.uint8)

    def paint(self, mask: np.ndarray, color: Color, label: int | None, texture: float = 0.0,
              shade: float = 0.0) -> None:
        """Colour ``mask`` (optionally with fine texture and a radial shade) and set its part label."""
        box = _bbox(mask)
        if box is None:
            return
        win = (slice(box[0], box[2] + 1), slice(box[1], box[3] + 1))  # work on the shape's bounding box only
        m, img = mask[win], self.img[win]
        col = np.asarray(color, np.float32)
        if texture > 0 or shade > 0:
            ys, xs = np.nonzero(m)
            gain = np.ones(len(ys), np.float32)
            if texture > 0:
                gain += texture * self.rng.standard_normal(len(ys), dtype=np.float32)
            if shade > 0:
                cy, cx = ys.mean(), xs.mean()
                r = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
                gain -= shade * (r / max(r.max(), 1.0)).astype(np.float32)
            img[ys, xs] = col[None, :] * gain[:, None]
        else:
            img[m] = col
        if label is not None:
            self.labels[win][m] = label


def jitter_color(rng: np.random.Generator, color: Color, amount: float) -> Color:
    """Per-object colour variation (keeps hue class, moves shade)."""
    c = np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))  # type: ignore[return-value]


def smooth_noise(rng: np.random.Generator, size: int, amount: float) -> np.ndarray:
    """Low-frequency multiplicative texture around 1 (a coarse random grid upsampled)."""
    grid = rng.normal(1.0, amount, (6, 6)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


# -- shape masks (bool HxW) -------------------------------------------------------------------------

def circle(cv: Canvas, x: float, y: float, r: float) -> np.ndarray:
    m = cv.blank()
    cv2.circle(m, cv.pt(x, y), cv.px(r), 1, -1)
    return m.astype(bool)


def ellipse(cv: Canvas, x: float, y: float, rx: float, ry: float, angle_deg: float) -> np.ndarray:
    m = cv.blank()
    cv2.ellipse(m, cv.pt(x, y), (cv.px(rx), cv.px(ry)), angle_deg, 0, 360, 1, -1)
    return m.astype(bool)


def ring(cv: Canvas, x: float, y: float, r_out: float, r_in: float) -> np.ndarray:
    inner = cv.blank()
    cv2.circle(inner, cv.pt(x, y), max(1, int(round(r_in * cv.size))), 1, -1)
    return circle(cv, x, y, r_out) & ~inner.astype(bool)


def rect(cv: Canvas, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    m = cv.blank()
    cv2.rectangle(m, cv.pt(x0, y0), cv.pt(x1, y1), 1, -1)
    return m.astype(bool)


def rotated_rect(cv: Canvas, x: float, y: float, w: float, h: float, angle_deg: float) -> np.ndarray:
    box = cv2.boxPoints(((x * cv.size, y * cv.size), (w * cv.size, h * cv.size), angle_deg))
    m = cv.blank()
    cv2.fillPoly(m, [np.round(box).astype(np.int32)], 1)
    return m.astype(bool)


def polygon(cv: Canvas, x: float, y: float, r: float, n: int, angle: float) -> np.ndarray:
    t = angle + np.arange(n) * 2 * np.pi / n
    pts = np.stack([x + r * np.cos(t), y + r * np.sin(t)], 1) * cv.size
    m = cv.blank()
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def polyline(cv: Canvas, pts: Sequence[tuple[float, float]], thickness: float) -> np.ndarray:
    m = cv.blank()
    arr = np.round(np.asarray(pts, np.float64) * cv.size).astype(np.int32)
    cv2.polylines(m, [arr], False, 1, cv.px(thickness))
    return m.astype(bool)


def bezier(p0: tuple[float, float], p1: tuple[float, float], p2: tuple[float, float], n: int = 32) -> np.ndarray:
    """Points of a quadratic Bezier curve (normalised coordinates)."""
    t = np.linspace(0, 1, n)[:, None]
    a, b, c = (np.asarray(p, np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c


def blob(cv: Canvas, x: float, y: float, r: float) -> np.ndarray:
    """Irregular closed blob (foreign contamination)."""
    n = 9
    t = np.sort(cv.rng.uniform(0, 2 * np.pi, n))
    rr = r * cv.rng.uniform(0.5, 1.0, n)
    pts = np.stack([x + rr * np.cos(t), y + rr * np.sin(t)], 1) * cv.size
    m = cv.blank()
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m.astype(bool)


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask.copy()
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.erode(mask.astype(np.uint8), k).astype(bool)


def place(cv: Canvas, make, region: np.ndarray, occupied: np.ndarray, gap: int = 2, tries: int = 200,
          clearance: float = 0.0):
    """Rejection-sample a shape (``make(x, y) -> (mask, params)``) lying fully inside ``region``, clear of
    ``occupied`` by ``gap`` pixels and of the image border.

    Why: same-class items must never touch, or they would merge into one connected component and a
    normal image would break its own counting rule. Centres are drawn only where the free space is at
    least ``clearance`` (normalised; e.g. a circle's radius) deep, so crowded scenes still fit quickly.
    Returns (mask, params) or None when it cannot fit.
    """
    box = _bbox(region)
    if box is None:
        return None
    # work inside the region's bounding box (+ gap): anything outside it is outside the region anyway
    y0, x0 = max(box[0] - 1, 0), max(box[1] - 1, 0)
    y1, x1 = min(box[2] + 2, cv.size), min(box[3] + 2, cv.size)
    py0, px0 = max(y0 - gap, 0), max(x0 - gap, 0)
    square = np.ones((2 * gap + 1, 2 * gap + 1), np.uint8)  # square: also blocks diagonal (8-connected) contact
    grown = cv2.dilate(occupied[py0:y1 + gap, px0:x1 + gap].astype(np.uint8), square)
    blocked = grown[y0 - py0:y1 - py0, x0 - px0:x1 - px0].astype(bool) | ~region[y0:y1, x0:x1]
    edge = np.zeros((cv.size, cv.size), bool)  # shapes clipped by the image border would be measured
    edge[: gap + 1] = edge[-gap - 1:] = edge[:, : gap + 1] = edge[:, -gap - 1:] = True  # wrong (a cut screw)
    blocked |= edge[y0:y1, x0:x1]
    free = cv2.distanceTransform((~blocked).astype(np.uint8), cv2.DIST_L2, 3)
    ys, xs = np.nonzero(free >= max(clearance * cv.size - 0.5, 0.5))
    if len(ys) == 0:
        return None
    for _ in range(tries):
        i = int(cv.rng.integers(len(ys)))
        x = (x0 + xs[i] + cv.rng.uniform(-0.5, 0.5)) / cv.size
        y = (y0 + ys[i] + cv.rng.uniform(-0.5, 0.5)) / cv.size
        mask, params = make(x, y)
        inside = mask[y0:y1, x0:x1]
        if inside.any() and int(inside.sum()) == int(mask.sum()) and not (inside & blocked).any():
            return mask, params
    return None


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    return None if len(ys) == 0 else (int(ys[0]), int(xs[0]), int(ys[-1]), int(xs[-1]))


def finish(cv: Canvas) -> np.ndarray:
    """Apply lighting gradient, colour gain, sensor noise and slight blur; return uint8 RGB."""
    rng, s = cv.rng, cv.size
    axis = np.arange(s, dtype=np.float32) / s - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    strength = 2 * rng.uniform(0.04, 0.14)
    light = 1.0 + strength * (np.cos(theta) * axis[None, :] + np.sin(theta) * axis[:, None])  # separable ramp
    gain = rng.uniform(0.93, 1.05, 3).astype(np.float32)
    img = cv.img * light[:, :, None]
    img *= gain
    sigma = rng.uniform(0.4, 0.8) * s / 128
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma, 0.3))
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= rng.uniform(1.5, 4.0)
    img += noise
    return np.clip(img, 0, 255, out=img).astype(np.uint8)
