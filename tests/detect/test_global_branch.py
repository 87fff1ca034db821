"""The global branch: a Gaussian of the normals' pooled features ranks an image whose layout changed above normal
ones, although every patch of it is a normal patch; it survives a save and load, and a damaged file is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from comgen.detect.global_branch import GlobalBranch, GlobalBranchConfig, describe
from comgen.errors import ArtifactError, ConfigError


def _features(n: int, rng: np.random.Generator, parts: int) -> list[torch.Tensor]:
    """Two scales of [n, C, h, w] features of images with ``parts`` bright parts at random cells: every cell is
    either background or a part, as in a normal image, so only the count tells an anomaly."""
    out = []
    for c, side in ((4, 8), (6, 4)):
        f = rng.normal(0, 0.1, size=(n, c, side, side)).astype(np.float32)
        for i in range(n):
            cells = rng.choice(side * side, size=parts * side * side // 16, replace=False)
            f[i, 0].flat[cells] += 1.0
        out.append(torch.from_numpy(f))
    return out


def test_a_count_anomaly_made_of_normal_patches_ranks_above_normals() -> None:
    rng = np.random.default_rng(0)
    cfg = GlobalBranchConfig(scales=(0, 1), grid=2)
    branch = GlobalBranch.fit(describe(_features(120, rng, 4), cfg), cfg)
    branch.set_scales(describe(_features(40, rng, 4), cfg))
    normal = branch.score(_features(30, rng, 4))
    extra = branch.score(_features(30, rng, 7))
    missing = branch.score(_features(30, rng, 1))
    assert np.median(normal) < min(np.median(extra), np.median(missing))
    labels = np.r_[np.zeros(30), np.ones(60)]
    scores = np.r_[normal, extra, missing]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labels, scores) > 0.95


def test_save_and_load_keep_the_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    cfg = GlobalBranchConfig(scales=(0, 1), grid=1)
    branch = GlobalBranch.fit(describe(_features(30, rng, 4), cfg), cfg)
    branch.set_scales(describe(_features(10, rng, 4), cfg))
    test = _features(5, rng, 4)
    branch.save(tmp_path / "g", {"score_mean": 0.5, "score_std": 2.0})
    loaded, cal = GlobalBranch.load(tmp_path / "g")
    assert cal == {"score_mean": 0.5, "score_std": 2.0} and loaded.cfg == cfg
    np.testing.assert_allclose(loaded.score(test), branch.score(test), rtol=1e-12)


def test_damaged_files_are_one_line_errors(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(2)
    cfg = GlobalBranchConfig(scales=(0,), grid=0)
    d = GlobalBranch.fit(describe(_features(10, rng, 4), cfg), cfg).save(tmp_path / "g", {"score_mean": 0.0,
                                                                                          "score_std": 1.0})
    arrays = GlobalBranch.load(d)[0].arrays()
    save_file({**arrays, "scale_std": np.zeros(1)}, str(d / "gaussians.safetensors"))
    with pytest.raises(ArtifactError, match="non-finite or non-positive"):
        GlobalBranch.load(d)
    save_file({k: v for k, v in arrays.items() if k != "mean0"}, str(d / "gaussians.safetensors"))
    with pytest.raises(ArtifactError, match="missing array 'mean0'"):
        GlobalBranch.load(d)
    (d / "gaussians.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="gaussians.safetensors: unreadable"):
        GlobalBranch.load(d)
    (d / "calibration.json").unlink()
    with pytest.raises(ArtifactError, match="calibration.json: missing"):
        GlobalBranch.load(d)


@pytest.mark.parametrize("bad", [{"scales": []}, {"scales": [-1]}, {"grid": -1}, {"grid": 9}, {"grid": 1.5}])
def test_config_refuses_bad_values(bad: dict) -> None:
    with pytest.raises(ConfigError, match="detector.global_branch"):
        GlobalBranchConfig(**bad)
