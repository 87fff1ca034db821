"""Small structured normal images (fixed layouts with jitter) and shared tiny backbones for the feature and mask tests."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from comgen.features.backbone import Backbone, BackboneConfig, build_backbone

SIZE = 64


def layout_image(rng: np.random.Generator, layout: int, size: int = SIZE) -> np.ndarray:
    """A textured grey background with two coloured parts whose arrangement depends on ``layout`` (0 or 1)."""
    base = rng.normal(150, 6, (size, size, 1)).clip(0, 255)
    img = np.repeat(base, 3, axis=2).astype(np.uint8)
    j = lambda: int(rng.integers(-2, 3))  # noqa: E731
    if layout == 0:
        cv2.circle(img, (16 + j(), 18 + j()), 9, (40, 70, 200), -1)
        cv2.rectangle(img, (36 + j(), 36 + j()), (54 + j(), 54 + j()), (210, 180, 40), -1)
    else:
        cv2.circle(img, (46 + j(), 46 + j()), 9, (40, 70, 200), -1)
        cv2.rectangle(img, (8 + j(), 8 + j()), (26 + j(), 26 + j()), (210, 180, 40), -1)
    return img


def normal_set(n: int, seed: int = 0, layouts: tuple[int, ...] = (0,)) -> tuple[np.ndarray, list[str], list[int]]:
    rng = np.random.default_rng(seed)
    lay = [layouts[i % len(layouts)] for i in range(n)]
    return np.stack([layout_image(rng, l) for l in lay]), [f"n{seed}_{i:03d}" for i in range(n)], lay


@pytest.fixture(scope="session")
def pretrained_backbone() -> Backbone:
    return build_backbone(BackboneConfig(layers=(1, 2, 3)))


@pytest.fixture(scope="session")
def random_backbone() -> Backbone:
    return build_backbone(BackboneConfig(weights="random", layers=(1, 2, 3)))
