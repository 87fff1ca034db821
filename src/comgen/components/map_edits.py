"""ComGEN's logical edits applied to a class map instead of an image: remove, add, move, resize, re-class, swap.

Why on the map: an edit of the composition needs no rendering, so thousands of them cost milliseconds, and the
composition branch of the detector (SALAD's design: a network trained on normal composition maps against perturbed
ones) sees exactly the change ComGEN makes in pixels, as a change of which part is where.
"""

from __future__ import annotations

import cv2
import numpy as np

EDITS = ("remove", "add", "move", "resize", "reclass", "swap")


def instance_masks(class_map: np.ndarray, background: int = 0, min_area: int = 1) -> list[tuple[int, np.ndarray]]:
    """(class, boolean mask) of every connected foreground instance of at least ``min_area`` pixels."""
    out = []
    for c in np.unique(class_map):
        if c == background:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats((class_map == c).astype(np.uint8), connectivity=8)
        out += [(int(c), labels == j) for j in range(1, n) if stats[j, cv2.CC_STAT_AREA] >= min_area]
    return out


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``mask`` moved by (dy, dx); what leaves the frame is dropped."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    ys, xs = ys + dy, xs + dx
    keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    out[ys[keep], xs[keep]] = True
    return out


def _free_spot(mask: np.ndarray, free: np.ndarray, rng: np.random.Generator, tries: int = 12) -> np.ndarray | None:
    """``mask`` moved to a place where it lands (almost) only on free pixels, or None."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    for _ in range(tries):
        dy = int(rng.integers(-ys.min(), h - ys.max()))
        dx = int(rng.integers(-xs.min(), w - xs.max()))
        if abs(dy) + abs(dx) < 2:
            continue
        moved = _shifted(mask, dy, dx)
        if moved.sum() and (moved & ~free).sum() <= 0.05 * moved.sum():
            return moved
    return None


def _scaled(mask: np.ndarray, factor: float) -> np.ndarray:
    """``mask`` scaled by ``factor`` about its centroid."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    m = np.float32([[factor, 0, cx * (1 - factor)], [0, factor, cy * (1 - factor)]])
    return cv2.warpAffine(mask.astype(np.uint8), m, mask.shape[::-1], flags=cv2.INTER_NEAREST) > 0


def perturb(class_map: np.ndarray, rng: np.random.Generator, num_classes: int, background: int = 0,
            min_area: int = 4) -> tuple[np.ndarray, np.ndarray, str] | None:
    """One random logical edit of ``class_map``: (edited map, changed-pixel mask, edit name), or None when the map
    has no instance to edit. Each edit changes the composition only: the parts keep their shapes."""
    parts = instance_masks(class_map, background, min_area)
    if not parts:
        return None
    out = class_map.copy()
    free = class_map == background
    for edit in rng.permutation(EDITS):
        c, m = parts[int(rng.integers(len(parts)))]
        if edit == "remove":
            out[m] = background
            return out, m, edit
        if edit in ("add", "move"):
            spot = _free_spot(m, free | (m if edit == "move" else False), rng)
            if spot is None:
                continue
            if edit == "move":
                out[m] = background
            out[spot] = c
            return out, spot | (m if edit == "move" else False), edit
        if edit == "resize":
            big = _scaled(m, float(rng.choice([0.6, 1.5])))
            if not big.any():
                continue
            out[m] = background
            out[big] = c
            return out, big | m, edit
        if edit == "reclass" and num_classes > 2:
            others = [k for k in range(num_classes) if k not in (background, c)]
            out[m] = int(rng.choice(others))
            return out, m, edit
        if edit == "swap":
            other = [(k, mm) for k, mm in parts if k != c]
            if not other:
                continue
            k, mm = other[int(rng.integers(len(other)))]
            out[m], out[mm] = k, c
            return out, m | mm, edit
    return None


def small_maps(class_maps: np.ndarray, size: int) -> np.ndarray:
    """Class maps [N,H,W] resized (nearest) to the editing resolution."""
    if class_maps.shape[1:] == (size, size):
        return class_maps
    return np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in class_maps])


def class_stats(maps: np.ndarray, num_classes: int, min_area: int) -> np.ndarray:
    """Per foreground class of every map: log1p of its instance count (instances of at least ``min_area`` px)
    and ten times its area share, [N, 2(K-1)] (the composition branch's second input)."""
    stats = np.zeros((len(maps), 2 * (num_classes - 1)), np.float32)
    for i, m in enumerate(maps):
        for c in range(1, num_classes):
            mask = (m == c).astype(np.uint8)
            if mask.any():
                _, _, st, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
                stats[i, c - 1] = np.log1p(int((st[1:, cv2.CC_STAT_AREA] >= min_area).sum()))
                stats[i, num_classes - 2 + c] = 10.0 * mask.mean()
    return stats
