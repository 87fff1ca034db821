"""The patch-memory branch: it finds a patch never seen among the normals, and survives a save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comgen.detect.patch_memory import PatchMemory, PatchMemoryConfig
from comgen.errors import ArtifactError, ConfigError
from comgen.features.backbone import BackboneConfig, build_backbone, to_tensor


def _texture(rng: np.random.Generator, n: int, size: int = 64) -> np.ndarray:
    """Random grain: no two images align, so only a memory of all patches can tell normal from not."""
    base = rng.integers(90, 140, size=(n, size // 4, size // 4, 1))
    return np.repeat(np.repeat(np.repeat(base, 4, 1), 4, 2), 3, 3).astype(np.uint8)


@pytest.fixture(scope="module")
def backbone():
    """The offline ImageNet weights: a random-weight network does not localise (its border effects dominate)."""
    return build_backbone(BackboneConfig())


def test_an_unseen_patch_scores_above_every_normal_image(backbone) -> None:
    rng = np.random.default_rng(0)
    normals = _texture(rng, 12)
    cfg = PatchMemoryConfig(coreset=0.5)
    memory = PatchMemory.fit([backbone(to_tensor(normals[i:i + 4])) for i in range(0, 12, 4)], cfg)
    test = _texture(rng, 4)
    test[2:, 20:30, 36:46] = (230, 40, 40)  # a red stain on the grain
    scores, maps = memory.score(backbone(to_tensor(test)), 64)
    assert maps.shape == (4, 64, 64)
    assert scores[2:].min() > scores[:2].max()
    peak = np.unravel_index(np.argmax(maps[2]), maps[2].shape)
    assert 12 <= peak[0] <= 38 and 28 <= peak[1] <= 54


def test_save_and_load_give_the_same_scores(backbone, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    feats = backbone(to_tensor(_texture(rng, 6)))
    memory = PatchMemory.fit([feats], PatchMemoryConfig(coreset=1.0, max_patches=50))
    assert len(memory.patches) == 50
    cal = {"score_mean": 1.0, "score_std": 0.5, "map_mean": 0.2, "map_std": 0.1}
    memory.save(tmp_path, cal)
    back, back_cal = PatchMemory.load(tmp_path)
    assert back_cal == cal
    np.testing.assert_array_equal(back.score(feats, 64)[1], memory.score(feats, 64)[1])
    (tmp_path / "patches.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError, match="patches.safetensors"):
        PatchMemory.load(tmp_path)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(ArtifactError, match="config.yaml"):
        PatchMemory.load(tmp_path)


def test_bad_settings_are_refused() -> None:
    for bad in ({"coreset": 0.0}, {"coreset": float("nan")}, {"neighbourhood": 2}, {"scales": []},
                {"max_patches": 0}):
        with pytest.raises(ConfigError):
            PatchMemoryConfig(**bad)
