"""A tiny MVTec LOCO-layout dataset written by the tests themselves (no dependency on the synth generator)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from comgen.io import write_png

H, W = 40, 48  # not square, so a transposed map is caught
DEFECTS = [
    {"defect_name": "missing_item", "pixel_value": 11, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "extra_item", "pixel_value": 12, "saturation_threshold": 20, "relative_saturation": False},
    {"defect_name": "scratch", "pixel_value": 21, "saturation_threshold": 0.5, "relative_saturation": True},
]
# test label -> list of images, each a list of masks given as (pixel value, y0, y1, x0, x1)
ANOMALIES = {
    "logical_anomalies": [[(11, 2, 12, 3, 15)], [(11, 20, 30, 5, 20), (12, 5, 12, 30, 44)], [(12, 25, 35, 30, 40)]],
    "structural_anomalies": [[(21, 10, 18, 10, 30)], [(21, 28, 36, 2, 12)]],
}
N_GOOD_TEST = 3


def _image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 255, (H, W, 3), dtype=np.uint8)


def make_loco(root: Path, category: str = "box", seed: int = 0) -> Path:
    """Write ``root/<category>`` in MVTec LOCO layout; returns the dataset root."""
    rng = np.random.default_rng(seed)
    cat = root / category
    for split, n in (("train", 2), ("validation", 1)):
        for i in range(n):
            write_png(cat / split / "good" / f"{i:03d}.png", _image(rng))
    for i in range(N_GOOD_TEST):
        write_png(cat / "test" / "good" / f"{i:03d}.png", _image(rng))
    for label, images in ANOMALIES.items():
        for i, masks in enumerate(images):
            write_png(cat / "test" / label / f"{i:03d}.png", _image(rng))
            for k, (value, y0, y1, x0, x1) in enumerate(masks):
                m = np.zeros((H, W), np.uint8)
                m[y0:y1, x0:x1] = value
                write_png(cat / "ground_truth" / label / f"{i:03d}" / f"{k:03d}.png", m)
    (cat / "defects_config.json").write_text(json.dumps(DEFECTS))
    return root


def union_mask(label: str, index: int) -> np.ndarray:
    """OR of the ground-truth masks of one fixture image (all-False for good images)."""
    m = np.zeros((H, W), bool)
    if label != "good":
        for _, y0, y1, x0, x1 in ANOMALIES[label][index]:
            m[y0:y1, x0:x1] = True
    return m


def write_maps(ds, maps_root: Path, fn: Callable[[object, np.ndarray], np.ndarray], category: str = "box") -> list:
    """Write one map per test image: ``fn(sample, union_of_its_gt) -> HxW float``."""
    from comgen.evaluate.maps import write_map

    samples = ds.samples(category, "test")
    for s in samples:
        write_map(maps_root, s, np.asarray(fn(s, union_mask(s.label, int(s.image_id))), np.float32))
    return samples
