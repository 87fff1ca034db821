from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comgen.detect.calibration import calibrate
from comgen.detect.data import Material, Splits, augment, from_tiles, tile_material, to_tiles
from comgen.detect.predict import Detector
from comgen.detect.train import train_detector

from .conftest import tiny_config, toy_image, toy_splits


def test_tiles_round_trip() -> None:
    arr = np.arange(2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    t = to_tiles(arr, 2)
    assert t.shape == (8, 4, 4, 3)
    np.testing.assert_array_equal(t[1], arr[0, :4, 4:])  # row-major: tile 1 = top-right
    np.testing.assert_array_equal(t[6], arr[1, 4:, :4])
    np.testing.assert_array_equal(from_tiles(t, 2), arr)
    assert to_tiles(arr, 1) is arr


def test_tile_material_labels_and_exclusion() -> None:
    img = np.zeros((2, 8, 8, 3), np.uint8)
    tgt = np.zeros((2, 8, 8), np.float32)
    tgt[1, 0, 7] = 1  # image 1: defect in its top-right tile
    mat = Material(img, tgt, np.array([0, 1], np.float32), ["a", "b"], [["a"], ["src"]])
    t = tile_material(mat, 2)
    assert t.labels.tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert t.ids[5] == "b#1" and t.exclude[5] == ["src#0", "src#1", "src#2", "src#3"]
    assert t.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_augment_keeps_masks_aligned() -> None:
    rng = np.random.default_rng(0)
    img, mask = toy_image(rng, 64, "extra")
    out, tgt = augment(img[None], mask[None].astype(np.float32), np.random.default_rng(1), 0.3)
    assert out.shape == (1, 64, 64, 3) and tgt.shape == (1, 64, 64)
    assert tgt.sum() == pytest.approx(mask.sum(), rel=0.3)
    red = (out[0, ..., 0] > 150) & (out[0, ..., 1] < 100)
    assert red[tgt[0] > 0].mean() > 0.9  # the shifted mask still covers the (shifted) extra red square


def test_calibrate_threshold_is_normal_quantile() -> None:
    logits = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    labels = np.array([0, 0, 0, 0, 1.0])
    cal = calibrate(logits, labels, 0.0, 1.0, 1.0)
    assert cal["score_mean"] == pytest.approx(1.5)
    assert cal["threshold"] == pytest.approx((3.0 - 1.5) / np.std([0, 1, 2, 3]))
    assert cal["val_auroc_generated"] == 1.0
    grouped = calibrate(logits, labels, 0.0, 1.0, 1.0, group=np.array([0, 0, 1, 1, 1]))
    assert grouped["n_val_normal"] == 1 and grouped["n_val_anomalous"] == 1


def test_tiled_training_and_prediction(tmp_path: Path) -> None:
    sp = toy_splits()
    tiled = Splits(tile_material(sp.train, 2), tile_material(sp.val, 2), to_tiles(sp.bank_images, 2),
                   [f"{i}#{k}" for i in sp.bank_ids for k in range(4)])
    cfg = tiny_config(image_size=32, tiles=2, epochs=1, bank={"window": 1, "global_grid": 1})
    train_detector(tmp_path, cfg, splits=tiled, log=lambda m: None, cpu=True)
    det = Detector.load(tmp_path)
    rng = np.random.default_rng(9)
    imgs = [toy_image(rng, 64, "good")[0], toy_image(rng, 96, "extra")[0]]
    scores, maps = det.predict(imgs, notice=None)
    assert scores.shape == (2,) and [m.shape for m in maps] == [(64, 64), (96, 96)]


def _normal_only_run(root: Path, n: int = 10) -> Path:
    """A folder dataset of ``train/good`` alone (no validation split) and a run with a tiny generated set."""
    import cv2

    from comgen.generate.commands import run_generate

    rng = np.random.default_rng(0)
    good = root / "data" / "parts" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(good / f"{i:03d}.png"), toy_image(rng)[0][:, :, ::-1])
    run_generate(root / "data", "parts", {"backend": "cutpaste", "n": 4, "image_size": 64}, out=root / "run",
                 log=lambda m: None)
    return root / "run"


def _normal_ids(mat: Material) -> set[str]:
    return {i.split("#")[0] for i, label in zip(mat.ids, mat.labels) if label == 0}


def test_without_a_validation_split_normals_are_a_seeded_disjoint_hold_out_of_train(tmp_path: Path) -> None:
    from comgen.detect.data import load_splits
    from comgen.rundir import RunDir

    run = RunDir.open(_normal_only_run(tmp_path))
    everything = {f"{i:03d}" for i in range(10)}
    cfg = tiny_config(val_fraction=0.3, backend="cutpaste")
    first = load_splits(run, cfg)
    held, kept = _normal_ids(first.val), _normal_ids(first.train)
    assert len(held) == 3 and not held & kept and held | kept == everything  # disjoint, nothing lost
    assert {i.split("#")[0] for i in first.bank_ids} == kept  # held-out normals never serve as references
    again = load_splits(run, cfg)
    assert _normal_ids(again.val) == held and np.array_equal(again.val.images, first.val.images)
    others = {frozenset(_normal_ids(load_splits(run, cfg.replace(seed=s)).val)) for s in (1, 2, 3)}
    assert others - {frozenset(held)}  # the hold-out follows the seed
