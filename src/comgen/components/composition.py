"""Class map -> Composition (instances) -> fixed-length composition vector.

Why: Low-Density Sampling scores whole images by *what* is in them (how many parts of each class, where,
how big, which colour), not by pixels. Everything here works from a per-pixel class map, so the CPU learner,
the SD back-end's attention maps and edited compositions all share one description.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from comgen.records import Component, Composition

#: names of the per-class entries of a composition vector (``vector_names`` adds the class and grid cells)
CLASS_FEATURES: tuple[str, ...] = (
    "count", "area_sum", "area_mean", "cy", "cx", "cy_std", "cx_std", "nn_min", "L", "a", "b",
)


def rgb_to_lab(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> CIE Lab float32 (L in 0..100, a/b roughly -128..127)."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def min_area_pixels(fraction: float, h: int, w: int) -> int:
    """The smallest instance kept, in pixels, of an image of h x w given as a share of its area (at least 1)."""
    return max(1, int(round(fraction * h * w)))


def instances_of(class_map: np.ndarray, class_id: int, min_area: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of one class: (label image, stats [n,5], centroids [n,2] as x,y), small ones dropped.

    Labels of dropped components are kept in the label image but not returned in ``stats``; callers index
    instances by the returned ``ids`` (column 0 of the stacked result, see ``compose``).
    """
    mask = (class_map == class_id).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= max(1, min_area)) + 1
    return labels, np.concatenate([keep[:, None], stats[keep]], axis=1), cents[keep]


def compose(class_map: np.ndarray, image: np.ndarray, image_id: str, background: int = 0,
            min_area: int = 1, lab: np.ndarray | None = None) -> Composition:
    """Split every foreground class of ``class_map`` into instances and describe each one.

    Colour is the instance's mean Lab; orientation the principal axis from image moments.
    """
    if class_map.shape != image.shape[:2]:
        raise ValueError(f"class map {class_map.shape} does not match image {image.shape[:2]}")
    lab = rgb_to_lab(image) if lab is None else lab
    channels = [np.ascontiguousarray(lab[..., c]).ravel() for c in range(3)]  # once per image, not per class
    comps: list[Component] = []
    for k in np.unique(class_map):
        k = int(k)
        if k == background:
            continue
        labels, stats, cents = instances_of(class_map, k, min_area)
        if len(stats) == 0:
            continue
        n_lab = int(labels.max()) + 1
        inside = np.flatnonzero(labels.ravel())  # the class's own pixels: label 0 (the rest) is never read
        flat = labels.ravel()[inside]
        counts = np.bincount(flat, minlength=n_lab).astype(np.float64)
        means = np.stack([np.bincount(flat, weights=ch[inside], minlength=n_lab) for ch in channels], 1)
        means /= np.maximum(counts, 1)[:, None]
        for (lid, x, y, w, h, area), (cx, cy) in zip(stats, cents):
            crop = labels[y:y + h, x:x + w] == lid
            mask = np.zeros(class_map.shape, bool)
            mask[y:y + h, x:x + w] = crop
            m = cv2.moments(crop.astype(np.uint8), binaryImage=True)
            orient = 0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"]) if m["m00"] > 0 else 0.0
            comps.append(Component(
                class_id=k, mask=mask, centroid=(float(cy), float(cx)), area=int(area),
                color_lab=tuple(float(v) for v in means[lid]), bbox=(int(y), int(x), int(y + h), int(x + w)),
                orientation=float(orient)))
    return Composition(image_id=image_id, image_shape=tuple(class_map.shape[:2]), components=comps)


def vector_names(num_classes: int, background: int = 0, grid: int = 0, area_spread: bool = False,
                 holes: bool = False) -> list[str]:
    """Column names of ``composition_vector`` (for reports and debugging)."""
    names = []
    for k in range(num_classes):
        if k == background:
            continue
        names += [f"c{k}.{f}" for f in CLASS_FEATURES]
        names += [f"c{k}.grid{i}" for i in range(grid * grid)]
    if area_spread:
        names += [f"c{k}.area_spread" for k in range(num_classes) if k != background]
    if holes:
        names += [f"c{k}.holes" for k in range(num_classes) if k != background]
    return names


def composition_vector(components: Sequence[Component], image_shape: tuple[int, int], num_classes: int,
                       background: int = 0, grid: int = 0, area_spread: bool = False, holes: bool = False
                       ) -> np.ndarray:
    """Fixed-length description of a composition: per foreground class, counts, positions, sizes, colours.

    Positions are normalised by the image size, areas by its pixel count, Lab by its range. Features that are
    undefined for an absent class (position, colour) are NaN; the density model imputes them. ``grid`` > 0 adds
    the instance count per cell of a grid x grid partition (catches "two parts in one compartment").
    ``nn_min`` is the smallest centroid distance between two instances of the class (1.5 when fewer than two).
    ``area_spread`` appends, per foreground class, the log ratio of its largest to its smallest instance area (0
    with fewer than two): the mean and total area cannot tell "both rings have the same size" from one ring grown
    and the other shrunk. ``holes`` appends, per foreground class, the mean number of holes of its instances (0
    when absent): a part's inner structure, such as a connector's slots, which a rule may read.
    """
    h, w = image_shape
    per = len(CLASS_FEATURES) + grid * grid
    out = np.full((num_classes - 1 if 0 <= background < num_classes else num_classes) * per, np.nan, np.float64)
    col = 0
    spreads, hole_means = [], []
    for k in range(num_classes):
        if k == background:
            continue
        cs = [c for c in components if c.class_id == k]
        spreads.append(_area_spread([c.area for c in cs]))
        if holes:
            hole_means.append(float(np.mean([count_holes(c.mask, c.bbox) for c in cs])) if cs else 0.0)
        v = out[col:col + per]
        v[0] = len(cs)
        v[1] = sum(c.area for c in cs) / (h * w)
        v[7] = 1.5
        if cs:
            cy = np.array([c.centroid[0] for c in cs]) / h
            cx = np.array([c.centroid[1] for c in cs]) / w
            areas = np.array([c.area for c in cs], np.float64)
            lab = np.array([c.color_lab for c in cs], np.float64)
            v[2] = areas.mean() / (h * w)
            v[3], v[4] = cy.mean(), cx.mean()
            v[5], v[6] = cy.std(), cx.std()
            if len(cs) > 1:
                d = np.hypot(cy[:, None] - cy[None], cx[:, None] - cx[None])
                d[np.diag_indices_from(d)] = np.inf
                v[7] = d.min()
            wl = (lab * areas[:, None]).sum(0) / areas.sum()
            v[8], v[9], v[10] = wl[0] / 100.0, wl[1] / 128.0, wl[2] / 128.0
            if grid:
                gy = np.clip((cy * grid).astype(int), 0, grid - 1)
                gx = np.clip((cx * grid).astype(int), 0, grid - 1)
                v[len(CLASS_FEATURES):] = np.bincount(gy * grid + gx, minlength=grid * grid)
        elif grid:
            v[len(CLASS_FEATURES):] = 0
        col += per
    return np.concatenate([out] + ([spreads] if area_spread else []) + ([hole_means] if holes else []))


def _area_spread(areas: list[int]) -> float:
    """log(largest / smallest) of one class's instance areas; 0 with fewer than two instances."""
    return float(np.log(max(areas) / max(min(areas), 1))) if len(areas) > 1 else 0.0


def count_holes(mask: np.ndarray, bbox: tuple[int, int, int, int]) -> int:
    """Holes of one instance: the regions of other pixels that it encloses completely (degenerate contours of no
    area left out)."""
    y0, x0, y1, x1 = bbox
    crop = np.pad(mask[y0:y1, x0:x1].astype(np.uint8), 1)
    cnts, hier = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return enclosed_holes(cnts, hier, 1.0)


def enclosed_holes(contours: Sequence[np.ndarray], hierarchy: np.ndarray | None, min_area: float) -> int:
    """How many of ``cv2.findContours(..., RETR_CCOMP, ...)``'s inner contours enclose at least ``min_area``
    pixels: the holes of a mask."""
    if hierarchy is None:
        return 0
    return sum(1 for c, h in zip(contours, hierarchy[0]) if h[3] >= 0 and cv2.contourArea(c) >= min_area)


def component_features(c: Component, image_shape: tuple[int, int]) -> np.ndarray:
    """Per-instance realism features: relative area, aspect ratio of its bbox, Lab colour."""
    h, w = image_shape
    y0, x0, y1, x1 = c.bbox
    aspect = max(y1 - y0, 1) / max(x1 - x0, 1)
    return np.array([c.area / (h * w), math.log(aspect), *c.color_lab], np.float64)
