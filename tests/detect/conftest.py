"""Shared fixtures of the Stage III tests: a toy two-object world and one small trained detector.

Normal images: a red square on the left and a blue square on the right (positions jittered). Anomalies:
the blue square missing, or an extra red square; their masks mark the changed region. Small enough to train
in seconds with a random-weight backbone at 64 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comgen.detect.config import DetectorConfig
from comgen.detect.csda import HeadConfig
from comgen.detect.data import Material, Splits
from comgen.features.backbone import BackboneConfig

SIZE = 64


def toy_image(rng: np.random.Generator, size: int = SIZE, kind: str = "good") -> tuple[np.ndarray, np.ndarray]:
    img = np.full((size, size, 3), 128, np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    s = size // 5
    j = rng.integers(-2, 3, size=4)
    ry, rx = size // 2 - s // 2 + j[0], size // 6 + j[1]
    by, bx = size // 2 - s // 2 + j[2], size - size // 6 - s + j[3]
    img[ry:ry + s, rx:rx + s] = (220, 30, 30)
    if kind == "missing":
        mask[by:by + s, bx:bx + s] = True
    else:
        img[by:by + s, bx:bx + s] = (30, 30, 220)
    if kind == "extra":
        ey, ex = size // 8, size // 2 - s // 2
        img[ey:ey + s, ex:ex + s] = (220, 30, 30)
        mask[ey:ey + s, ex:ex + s] = True
    return img, mask


def toy_material(n_good: int, n_anom: int, seed: int, prefix: str) -> Material:
    rng = np.random.default_rng(seed)
    kinds = ["good"] * n_good + [("missing", "extra")[i % 2] for i in range(n_anom)]
    pairs = [toy_image(rng, SIZE, k) for k in kinds]
    ids = [f"{prefix}{i:03d}" for i in range(len(kinds))]
    return Material(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.float32),
                    np.array([k != "good" for k in kinds], np.float32), ids, [[i] for i in ids])


def toy_splits(seed: int = 0) -> Splits:
    train = toy_material(10, 8, seed, "t")
    val = toy_material(4, 2, seed + 1, "v")
    normal = train.labels == 0
    return Splits(train, val, train.images[normal], [i for i, n in zip(train.ids, normal) if n])


def tiny_config(**kw: object) -> DetectorConfig:
    base = dict(image_size=SIZE, backbone=BackboneConfig(weights="random"), head=HeadConfig(k=2, dim=16, img_dim=8),
                epochs=3, batch_size=6, lr=3e-3, ref_pool=3, rematch_every=2, augment_variants=1, patience=10,
                bank={"window": 1, "global_grid": 2})
    base.update(kw)
    return DetectorConfig(**base)  # type: ignore[arg-type]


# --- a large image (tiled mode): 1700x1000 px, defects of a few px -------------------------------------------------
LARGE_H, LARGE_W = 1000, 1700


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth grey texture (blobs of ~40 px) with fine grain, float [LARGE_H, LARGE_W, 3]."""
    import cv2

    low = rng.normal(0, 1, (LARGE_H // 40 + 2, LARGE_W // 40 + 2)).astype(np.float32)
    grey = cv2.resize(low, (LARGE_W, LARGE_H), interpolation=cv2.INTER_CUBIC) * 18 + 128
    grey += rng.normal(0, 3, (LARGE_H, LARGE_W))
    return np.repeat(np.clip(grey, 40, 215)[..., None], 3, axis=2)


def _add_defect(img: np.ndarray, mask: np.ndarray, y: int, x: int, s: int) -> None:
    """A red/cyan checker of s x s px: a wrong colour at full resolution whose mean is the background's own, so
    shrinking the image averages it away."""
    yy, xx = np.mgrid[0:s, 0:s]
    sign = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None] * np.array([1.0, -1.0, -1.0])
    img[y:y + s, x:x + s] += 90 * sign
    mask[y:y + s, x:x + s] = True


def large_image(rng: np.random.Generator, n_defects: int = 0, at: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image with defects, the same image without them, mask): defects of 4-9 px at random, or one 6 px at ``at``."""
    clean = _background(rng)
    img, mask = clean.copy(), np.zeros((LARGE_H, LARGE_W), bool)
    for _ in range(n_defects):
        s = int(rng.integers(4, 10))
        _add_defect(img, mask, int(rng.integers(0, LARGE_H - s)), int(rng.integers(0, LARGE_W - s)), s)
    if at is not None:
        _add_defect(img, mask, at[0], at[1], 6)
    return (np.clip(np.round(img), 0, 255).astype(np.uint8), np.clip(np.round(clean), 0, 255).astype(np.uint8),
            mask)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a detector trained for 3 epochs on the toy world (shared, read-only in tests)."""
    from comgen.detect.train import train_detector

    root = tmp_path_factory.mktemp("trained_run")
    train_detector(root, tiny_config(), splits=toy_splits(), log=lambda m: None, cpu=True)
    return root
