"""Tiny toy category for Stage I tests: a grey tray, one red disc, two blue squares, noise and jitter.

Its truth part-label map (0 background, 1 disc, 2 square) lets tests measure component recovery without
depending on the built-in benchmark.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from comgen.io import write_png
from comgen.records import Sample

DISC = (200, 40, 40)
SQUARE = (40, 60, 200)


def toy_image(rng: np.random.Generator, size: int = 64, n_squares: int = 2) -> tuple[np.ndarray, np.ndarray]:
    img = np.full((size, size, 3), 150, np.uint8)
    truth = np.zeros((size, size), np.uint8)
    r = size // 8
    cy, cx = rng.integers(r + 2, size // 2 - 2, 2)
    cv2.circle(img, (int(cx), int(cy)), r, DISC, -1)
    cv2.circle(truth, (int(cx), int(cy)), r, 1, -1)
    a = size // 10
    placed = 0
    while placed < n_squares:
        y, x = rng.integers(size // 2 + 1, size - a - 2, 2)
        x = int(rng.integers(2, size - a - 2))
        if truth[y:y + a, x:x + a].any():
            continue
        img[y:y + a, x:x + a] = SQUARE
        truth[y:y + a, x:x + a] = 2
        placed += 1
    noise = rng.normal(0, 4, img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return img, truth


def toy_images(n: int = 10, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = [toy_image(rng, size) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def toy_samples(root: Path, n: int = 10, size: int = 64, seed: int = 0, category: str = "toy") -> list[Sample]:
    """Write toy train images as PNGs and return Samples (no synth truth files)."""
    imgs, _ = toy_images(n, size, seed)
    out = []
    for i, im in enumerate(imgs):
        p = root / category / "train" / "good" / f"{i:03d}.png"
        write_png(p, im)
        out.append(Sample(path=p, category=category, split="train", label="good", kind="good", image_id=f"{i:03d}"))
    return out
