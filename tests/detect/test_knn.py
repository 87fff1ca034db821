from __future__ import annotations

import numpy as np
import pytest

from comgen.detect.knn import KnnConfig, KnnDetector
from comgen.errors import InputError
from comgen.features.backbone import BackboneConfig


def _normal(rng: np.random.Generator, n: int, size: int = 48) -> np.ndarray:
    """Grey plates with a blue square at a jittered position."""
    imgs = np.full((n, size, size, 3), 120, np.uint8)
    for i in range(n):
        y, x = rng.integers(10, 16, 2)
        imgs[i, y:y + 12, x:x + 12] = (30, 60, 200)
    return imgs + rng.integers(0, 6, imgs.shape, dtype=np.uint8)


def test_knn_flags_the_foreign_patch_where_it_is() -> None:
    rng = np.random.default_rng(0)
    cfg = KnnConfig(backbone=BackboneConfig(weights="random", layers=(1, 2)), image_size=48, coreset_ratio=0.5,
                    blur_sigma=1.0)
    det = KnnDetector(cfg).fit(_normal(rng, 8))
    good = _normal(rng, 3)
    bad = good.copy()
    bad[:, 30:42, 30:42] = (230, 40, 20)  # a red part where nothing belongs
    scores, maps = det.predict(np.concatenate([good, bad]))
    assert maps.shape == (6, 48, 48)
    assert scores[3:].min() > scores[:3].max()
    for m in maps[3:]:
        y, x = np.unravel_index(np.argmax(m), m.shape)
        assert 26 <= y <= 46 and 26 <= x <= 46


def test_knn_refuses_empty_input() -> None:
    det = KnnDetector(KnnConfig(backbone=BackboneConfig(weights="random", layers=(1, 2)), image_size=32))
    with pytest.raises(InputError, match="no normal training images"):
        det.fit(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="fit"):
        det.predict(np.zeros((1, 32, 32, 3), np.uint8))
