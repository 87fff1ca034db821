"""Preview PNG of a component model: training images beside their segmentation, every instance outlined and named
by its class's token.

Why: the learned classes are the vocabulary of every later edit; a person must be able to check at a glance
that <c1>, <c2>, ... are the parts they expect before generating thousands of anomalies from them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from comgen.io import write_png


def palette(k: int) -> np.ndarray:
    """K distinct RGB colours (background = dark grey), evenly spaced hues."""
    hues = (np.arange(max(k - 1, 1)) * 180 / max(k - 1, 1)).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 255)], -1)[None]
    cols = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    return np.concatenate([np.array([[40, 40, 40]], np.uint8), cols], 0)[:k]


def colorize(class_map: np.ndarray, k: int) -> np.ndarray:
    return palette(k)[np.clip(class_map, 0, k - 1)]


def _label(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def preview_image(images: np.ndarray, class_maps: np.ndarray, num_classes: int, tile: int = 192) -> np.ndarray:
    """Grid: one row per image (image | segmentation with tokens), plus a legend row."""
    rows = []
    scale = tile / 400.0
    for im, cm in zip(images, class_maps):
        a = cv2.resize(im, (tile, tile), interpolation=cv2.INTER_AREA)
        cmr = cv2.resize(cm.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
        b = colorize(cmr, num_classes).copy()
        b = (0.65 * b + 0.35 * a).astype(np.uint8)
        edges = cv2.morphologyEx(cmr, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        b[edges] = 255  # every instance outlined, so touching parts of one class still show as two
        for k in range(1, num_classes):
            m = (cmr == k).astype(np.uint8)
            if m.sum() < 4:
                continue
            n, lab, stats, cents = cv2.connectedComponentsWithStats(m)
            for j in range(1, n):  # every instance carries its class's token
                if stats[j, cv2.CC_STAT_AREA] >= max(4, tile * tile // 2000):
                    cx, cy = cents[j]
                    _label(b, f"<c{k}>", (int(cx) - 12, int(cy) + 4), max(scale, 0.3))
        rows.append(np.concatenate([a, np.full((tile, 4, 3), 255, np.uint8), b], 1))
    width = rows[0].shape[1]
    legend = np.full((28, width, 3), 255, np.uint8)
    pal = palette(num_classes)
    step = max(1, width // max(num_classes, 1))
    for k in range(num_classes):
        x = k * step + 4
        cv2.rectangle(legend, (x, 6), (x + 14, 20), tuple(int(v) for v in pal[k]), -1)
        cv2.putText(legend, "bg" if k == 0 else f"<c{k}>", (x + 18, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    sep = np.full((4, width, 3), 255, np.uint8)
    parts = []
    for r in rows:
        parts += [r, sep]
    return np.concatenate(parts + [legend], 0)


def write_preview(path: str | Path, model, images: np.ndarray, n: int = 4) -> Path:
    """Segment the first ``n`` images with ``model`` and write the preview PNG atomically."""
    images = images[:n]
    maps = model.segment(images)
    return write_png(path, preview_image(images, maps, model.num_classes))
