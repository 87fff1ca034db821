"""Structural edits of one component: texture, stain, deformation, cut, contamination, transplant.

Why (docs/design.md, "Prompt Modifications"): structural defects (scratches, dents, stains) are local changes of a
part's appearance, not of the composition. They come from the same machinery as logical edits: the edited
component's mask bounds the change (contamination and transplant may lie across its edge, ``spill_px``), so the
anomaly mask is exact and the component's token localises it.
Every function works on the component's bounding box only (fast at 256 px) and returns (image, mask).
"""

from __future__ import annotations

import cv2
import numpy as np

from comgen.generate.component_bank import ring


def _roi(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (slice(max(0, ys.min() - pad), min(h, ys.max() + 1 + pad)),
            slice(max(0, xs.min() - pad), min(w, xs.max() + 1 + pad)))


def _blob(mask: np.ndarray, rng: np.random.Generator, frac: tuple[float, float]) -> np.ndarray:
    """A random elliptic blob around a point of ``mask``, cut to ``mask``."""
    ys, xs = np.nonzero(mask)
    j = int(rng.integers(len(ys)))
    span = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    ax = np.maximum(1, (rng.uniform(*frac, 2) * span / 2)).astype(int)
    out = np.zeros(mask.shape, np.uint8)
    cv2.ellipse(out, (int(xs[j]), int(ys[j])), (int(ax[0]), int(ax[1])), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out.astype(bool) & mask


def _image_scale_blob(mask: np.ndarray, rng: np.random.Generator, radius: tuple[float, float],
                      min_axis: int) -> np.ndarray:
    """An elliptic blob centred on a random pixel of ``mask``, its half-axes a fraction of the image side (damage
    has its own size, not the part's), not cut to ``mask``."""
    ys, xs = np.nonzero(mask)
    j = int(rng.integers(len(ys)))
    ax = np.maximum(min_axis, rng.uniform(*radius, 2) * max(mask.shape)).astype(int)
    out = np.zeros(mask.shape, np.uint8)
    cv2.ellipse(out, (int(xs[j]), int(ys[j])), (int(ax[0]), int(ax[1])), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return out.astype(bool)


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), max(sigma, 0.5))
    return n / (np.abs(n).max() + 1e-6)


def texture(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Speckle / stripe texture and a brightness shift on a blob of the component."""
    region = _blob(mask, rng, (0.3, 0.7))
    sl = _roi(region, 2) if region.any() else _roi(mask, 2)
    out = image.copy()
    roi = out[sl].astype(np.float32)
    r = region[sl]
    h, w = r.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.6, 1.4)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * freq)
    speck = rng.standard_normal((h, w)).astype(np.float32)
    pattern = (rng.uniform(20, 45) * (0.6 * stripes + 0.4 * speck) + rng.choice([-1, 1]) * rng.uniform(15, 40))
    roi[r] = roi[r] + pattern[r][:, None]
    out[sl] = np.clip(roi, 0, 255).astype(np.uint8)
    return out, region


def deform(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Local smooth displacement (a dent/bend) of the component's pixels; mask = pixels that visibly changed."""
    sl = _roi(mask, 4)
    roi = image[sl]
    h, w = roi.shape[:2]
    amp = max(2.0, 0.25 * min(h, w))
    sigma = max(1.5, min(h, w) / 4)
    dx = _smooth_noise((h, w), rng, sigma) * amp
    dy = _smooth_noise((h, w), rng, sigma) * amp
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warped = cv2.remap(roi, xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    region = cv2.dilate(mask[sl].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    # only visible changes are written, so the image differs from the source exactly on the returned mask (a
    # faint warp left outside the mask would be an unlabelled anomaly)
    changed = region & (np.abs(warped.astype(np.int16) - roi.astype(np.int16)).sum(-1) > 30)
    out = image.copy()
    out[sl][changed] = warped[changed]
    full = np.zeros(mask.shape, bool)
    full[sl] = changed
    return out, full


def cut(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin cut/scratch across the component, showing the colour of what surrounds the part."""
    ys, xs = np.nonzero(mask)
    j = int(rng.integers(len(ys)))
    span = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    ang = rng.uniform(0, np.pi)
    half = 0.5 * span * rng.uniform(0.5, 1.0)
    p0 = (int(xs[j] - half * np.cos(ang)), int(ys[j] - half * np.sin(ang)))
    p1 = (int(xs[j] + half * np.cos(ang)), int(ys[j] + half * np.sin(ang)))
    line = np.zeros(mask.shape, np.uint8)
    thick = max(1, int(round(mask.shape[0] / 128 * rng.uniform(1.5, 3.0))))
    cv2.line(line, p0, p1, 1, thick)
    region = line.astype(bool) & mask
    around = ring(mask, max(2, mask.shape[0] // 64))
    colour = np.median(image[around], 0) if around.any() else np.array([20, 20, 20])
    out = image.copy()
    out[region] = np.clip(colour + rng.normal(0, 6, (int(region.sum()), 3)), 0, 255).astype(np.uint8)
    return out, region


VISIBLE_TAU = 12  # a pixel counts as changed (written and labelled) when a channel moved by more than this
CONTAMINATION_RADIUS = (0.025, 0.05)  # blob radius as a fraction of the image side
TRANSPLANT_RADIUS = (0.03, 0.12)  # half-axes of a transplanted blob, as a fraction of the image side


def spill_px(kind: str, shape: tuple[int, ...]) -> int:
    """How far (px) an edit of ``kind`` may reach past its component: foreign matter lies across a part's edge."""
    radius = {"contamination": CONTAMINATION_RADIUS, "transplant": TRANSPLANT_RADIUS}.get(kind)
    return int(np.ceil(radius[1] * max(shape[:2]))) if radius else 3


def _visible(before: np.ndarray, after: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Pixels of ``region`` where ``after`` differs visibly from ``before`` (any channel by more than VISIBLE_TAU).

    Why: a faint change left outside the label would be an unlabelled anomaly, and a labelled pixel that did not
    change teaches the detector to flag normal appearance.
    """
    return region & (np.abs(after.astype(np.int16) - before.astype(np.int16)).max(-1) > VISIBLE_TAU)


def _paste_visible(image: np.ndarray, sl: tuple[slice, slice], edited: np.ndarray,
                   region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write the window ``edited`` (of ``image[sl]``) where ``region`` visibly changed; returns (image, mask)."""
    changed = _visible(image[sl], edited, region)
    out = image.copy()
    out[sl][changed] = edited[changed]
    full = np.zeros(image.shape[:2], bool)
    full[sl] = changed
    return out, full


def contamination(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A foreign-coloured, textured blob lying on the component and spilling across its edge.

    Why: foreign matter has its own size, not the part's, and it is not cut to the part's outline. The first
    version (a blob cut to the part) left a sliver of a few pixels on a thin part and taught structural damage less
    (docs/experiments.md).
    """
    ys, xs = np.nonzero(mask)
    j = int(rng.integers(len(ys)))
    side = max(mask.shape)
    r = rng.uniform(*CONTAMINATION_RADIUS) * side
    ax = np.maximum(1.0, r * rng.uniform(0.6, 1.0, 2))
    pad = int(np.ceil(r)) + 2
    y0, y1 = max(0, ys[j] - pad), min(mask.shape[0], ys[j] + pad + 1)
    x0, x1 = max(0, xs[j] - pad), min(mask.shape[1], xs[j] + pad + 1)
    sl = (slice(y0, y1), slice(x0, x1))
    yy, xx = np.mgrid[sl].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    u = ((xx - xs[j]) * np.cos(ang) + (yy - ys[j]) * np.sin(ang)) / ax[0]
    v = (-(xx - xs[j]) * np.sin(ang) + (yy - ys[j]) * np.cos(ang)) / ax[1]
    wobble = _smooth_noise(u.shape, rng, max(1.0, r / 3)) * 0.3  # an irregular outline, not an ellipse
    blob = (u * u + v * v) < (1 + wobble) ** 2
    blob[ys[j] - y0, xs[j] - x0] = True
    base = rng.choice([np.array([30, 25, 20]), np.array([120, 90, 40]), rng.uniform(0, 255, 3)])
    tex = _smooth_noise(blob.shape, rng, 1.0)[..., None] * 25
    alpha = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 0.8)[..., None] * blob[..., None]
    roi = image[sl].astype(np.float32)
    edited = np.clip(roi * (1 - alpha * 0.9) + (base + tex) * alpha * 0.9, 0, 255).astype(np.uint8)
    return _paste_visible(image, sl, edited, blob)


def stain(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth discolouration (darker, tinted) of a blob of the component, with a soft edge.

    Why: a colour change is the one structural defect the others do not cover. ``texture`` adds stripes and speckle,
    which a detector finds by their high frequencies; a stain changes only the colour, smoothly (still the weakest
    structural type on screw_bag, docs/experiments.md).
    """
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    region = _image_scale_blob(grown, rng, (0.02, 0.045), min_axis=1) & grown
    sl = _roi(region, 2)
    tint = rng.uniform(0.45, 0.75) * np.array([1.0, rng.uniform(0.75, 0.95), rng.uniform(0.55, 0.8)])
    tint = tint[rng.permutation(3)] if rng.random() < 0.3 else tint  # mostly brownish, sometimes another cast
    alpha = cv2.GaussianBlur(region[sl].astype(np.float32), (0, 0), 1.0)[..., None] * region[sl][..., None]
    roi = image[sl].astype(np.float32)
    edited = np.clip(roi * (1 - alpha + alpha * tint), 0, 255).astype(np.uint8)
    return _paste_visible(image, sl, edited, region[sl])


def transplant(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
               donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch of another normal image Poisson-blended onto a blob centred on the component (NSA at one part).

    Why: NSA-style patches are the strongest structural baseline (generator benchmark), because blended foreign
    texture looks like real surface damage with no seam. The blob is centred on a pixel of the component, so the
    damage is that part's, but it has the image's scale (``TRANSPLANT_RADIUS``), not the part's, and lies across
    the part's edge: damage to a part a few pixels wide reaches the surface around it. A blob cut to the part (the
    first version) was a few pixels on small parts. The blob's size range and the share of structural anomalies were
    chosen on the generator benchmark (docs/experiments.md).
    On a small blob Poisson blending shows almost nothing, so the patch is then pasted with a feathered edge.
    Only pixels that visibly changed are written and labelled, as in ``deform``.
    """
    region = _image_scale_blob(mask, rng, TRANSPLANT_RADIUS, min_axis=2)
    if region.sum() < 4:
        return image.copy(), np.zeros(mask.shape, bool)
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    hh, ww = image.shape[:2]
    # the donor spot with the most texture among a few random ones: a flat spot blends invisibly
    spots = [(int(rng.integers(0, hh - h + 1)), int(rng.integers(0, ww - w + 1))) for _ in range(4)]
    sy, sx = max(spots, key=lambda p: float(donor[p[0]:p[0] + h, p[1]:p[1] + w].std()))
    patch = donor[sy:sy + h, sx:sx + w]
    sl = (slice(y0, y1), slice(x0, x1))
    roi, r = image[sl], region[sl]
    blended = None
    if min(h, w) >= 3 and 1 <= y0 and y1 < hh and 1 <= x0 and x1 < ww:
        clone = (cv2.NORMAL_CLONE, cv2.MIXED_CLONE)[int(rng.integers(2))]
        m8 = np.pad(r, 1).astype(np.uint8) * 255  # the solver needs a margin
        src = cv2.copyMakeBorder(patch, 1, 1, 1, 1, cv2.BORDER_REFLECT)
        # OpenCV puts the mask's bounding box (w x h) at centre - size // 2, i.e. exactly at (x0, y0)
        try:
            blended = cv2.seamlessClone(src, image, m8, (int(x0 + w // 2), int(y0 + h // 2)), clone)[sl]
        except cv2.error:  # degenerate geometry for the solver: feathered paste below
            blended = None
    if blended is None or _visible(roi, blended, r).sum() < 0.3 * region.sum():
        a = cv2.GaussianBlur(r.astype(np.float32), (0, 0), 0.8)[..., None]
        blended = (a * patch + (1 - a) * roi).round().astype(np.uint8)
    return _paste_visible(image, sl, blended, r)

STRUCTURAL = {"texture": texture, "deform": deform, "cut": cut, "contamination": contamination,
              "stain": stain, "transplant": transplant}
NEEDS_DONOR = ("transplant",)  # edits that take their material from another normal image


def apply_structural(kind: str, image: np.ndarray, mask: np.ndarray, seed: int,
                     donor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply one structural edit to ``image`` inside the component ``mask``; returns (image, defect mask).

    ``donor``: another normal image of the same size, for the edits in ``NEEDS_DONOR``.
    """
    if not mask.any():
        return image.copy(), np.zeros(mask.shape, bool)
    rng = np.random.default_rng(seed)
    if kind in NEEDS_DONOR:
        if donor is None or donor.shape != image.shape:
            raise ValueError(f"structural edit {kind!r} needs a donor image of shape {image.shape}")
        return STRUCTURAL[kind](image, mask, rng, donor)
    return STRUCTURAL[kind](image, mask, rng)
