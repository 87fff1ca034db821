"""Tiny datasets written by the tests themselves (never downloaded), one per supported layout."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

SIZE = 32


def img(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)
    return path


def mask(value: int, size: int = SIZE) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[4:12, 4:12] = value
    return m


LOCO_DEFECTS = [
    {"defect_name": "missing_thing", "pixel_value": 255, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 254, "saturation_threshold": 1.0, "relative_saturation": True},
]


def build_loco(root: Path, category: str = "box") -> Path:
    cat = root / category
    for i in range(3):
        save(cat / "train" / "good" / f"{i:03d}.png", img(i))
    save(cat / "validation" / "good" / "000.png", img(10))
    save(cat / "test" / "good" / "000.png", img(20))
    save(cat / "test" / "logical_anomalies" / "000.png", img(21))
    save(cat / "test" / "logical_anomalies" / "001.png", img(22))
    save(cat / "test" / "structural_anomalies" / "000.png", img(23))
    save(cat / "ground_truth" / "logical_anomalies" / "000" / "000.png", mask(255))
    save(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", mask(255))
    save(cat / "ground_truth" / "logical_anomalies" / "001" / "000.png", mask(255))
    save(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png", mask(254))
    (cat / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS))
    return root


def build_mvtec_ad(root: Path, category: str = "bottle") -> Path:
    cat = root / category
    for i in range(3):
        save(cat / "train" / "good" / f"{i:03d}.png", img(i))
    save(cat / "test" / "good" / "000.png", img(20))
    save(cat / "test" / "broken" / "000.png", img(21))
    save(cat / "test" / "broken" / "001.png", img(22))
    save(cat / "test" / "crack" / "000.png", img(23))
    save(cat / "ground_truth" / "broken" / "000_mask.png", mask(255))
    save(cat / "ground_truth" / "broken" / "001_mask.png", mask(255))
    save(cat / "ground_truth" / "crack" / "000_mask.png", mask(255))
    return root


def build_folder(root: Path) -> Path:
    """A user's own data: one category at the root, JPEGs, masks named like their images, one without mask."""
    save(root / "train" / "good" / "a.jpg", img(1))
    save(root / "train" / "good" / "b.jpg", img(2))
    save(root / "test" / "good" / "c.jpg", img(3))
    save(root / "test" / "dent" / "d.jpg", img(4))
    save(root / "test" / "dent" / "e.jpg", img(5))
    save(root / "ground_truth" / "dent" / "d.png", mask(255))
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's (size, mtime_ns) so tests can prove readers never write into a dataset."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}
