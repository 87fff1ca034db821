from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comgen.detect.calibration import calibrate
from comgen.detect.data import Material, Splits, TiledParts, at_source_resolution, augment
from comgen.detect.predict import Detector
from comgen.detect.train import train_detector

from .conftest import tiny_config, toy_image


def test_tiled_parts_labels_exclusion_and_groups() -> None:
    cfg = tiny_config(image_size=16, tile_scale=1.0, tile_overlap=0.0)
    parts = TiledParts(cfg)
    parts.add(np.zeros((16, 32, 3), np.uint8), np.zeros((16, 32), np.float32), 0.0, "a", ["a"])
    tgt = np.zeros((16, 32), np.float32)
    tgt[0, 31] = 1  # the defect lies in its right-hand tile
    parts.add(np.zeros((16, 32, 3), np.uint8), tgt, 1.0, "b", ["a"])
    parts.add(np.zeros((32, 16, 3), np.uint8), np.zeros((32, 16), np.float32), 1.0, "c", ["zz"])  # no mask
    t = parts.material()
    assert t.images.shape == (6, 16, 16, 3) and t.targets.shape == (6, 16, 16)
    assert t.labels.tolist() == [0, 0, 0, 1, 1, 1]  # a masked anomaly's clean tile is normal; maskless: all tiles
    assert t.ids[3] == "b#1" and t.exclude[3] == ["a#0", "a#1"] and t.exclude[0] == ["a#0", "a#1"]
    assert t.group.tolist() == [0, 0, 1, 1, 2, 2]
    assert parts.whole_images().shape == (3, 16, 16, 3)


def test_generated_anomaly_is_pasted_into_its_sharp_source() -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    small = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[10:14, 10:14] = True
    out, m = at_source_resolution(small, mask, source, (1, 1))
    assert out.shape == source.shape and m.shape == (64, 96) and m.sum() > 0
    far = np.ones((64, 96), bool)
    far[10:40, 20:55] = False
    np.testing.assert_array_equal(out[far], source[far])  # outside the edit: the source's own pixels
    assert (out[m] == 0).all()  # inside: the anomaly
    up, m2 = at_source_resolution(small, mask, None, (64, 96))  # no source: the anomaly upscaled whole
    assert up.shape == (64, 96, 3) and m2.sum() == m.sum()


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
    """Tiled mode end to end on the toy world at a non-square size: maps come back at each image's size."""
    import cv2

    cfg = tiny_config(image_size=32, tiles=2, epochs=1, bank={"window": 1, "global_grid": 1})
    rng = np.random.default_rng(3)

    def parts(kinds: list[str], prefix: str) -> TiledParts:
        p = TiledParts(cfg)
        for i, kind in enumerate(kinds):
            img, mask = toy_image(rng, 64, kind)
            p.add(cv2.resize(img, (96, 64)), cv2.resize(mask.astype(np.uint8), (96, 64)) > 0, float(kind != "good"),
                  f"{prefix}{i}", [f"{prefix}{i}"])
        return p

    normals, val = parts(["good"] * 6, "t"), parts(["good"] * 3 + ["extra"], "v")
    bank = normals.material()
    splits = Splits(Material.concat([bank, parts(["extra", "missing"] * 2, "g").material()]), val.material(),
                    bank.images, bank.ids, normals.whole_images(), val.whole_images())
    res = train_detector(tmp_path, cfg, splits=splits, log=lambda m: None, cpu=True)
    assert res.calibration["n_val_normal"] == 3 and res.calibration["n_val_anomalous"] == 1  # per whole image
    det = Detector.load(tmp_path)
    imgs = [toy_image(rng, 64, "good")[0], toy_image(rng, 96, "extra")[0], cv2.resize(toy_image(rng)[0], (96, 64))]
    scores, maps = det.predict(imgs, notice=None)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert [m.shape for m in maps] == [(64, 64), (96, 96), (64, 96)]


def test_tiled_splits_cut_anomalies_on_their_sources_grid(tmp_path: Path) -> None:
    """Generated anomalies made at a small square size are brought to their source's size and cut with its grid."""
    from types import SimpleNamespace

    from comgen.detect.data import tiled_splits
    from comgen.io import append_jsonl, write_png

    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        path = tmp_path / "good" / f"{i:03d}.png"
        write_png(path, rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
        samples.append(SimpleNamespace(path=path, image_id=path.stem))
    gen = tmp_path / "gen"
    img = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[2:6, 26:30] = 255  # top right
    write_png(gen / "images" / "a.png", img)
    write_png(gen / "masks" / "a.png", mask)
    line = {"id": "a", "file": "images/a.png", "mask": "masks/a.png", "source": str(samples[0].path)}
    append_jsonl(gen / "manifest.jsonl", line)
    cfg = tiny_config(image_size=32, tile_scale=1.0, tile_overlap=0.0)
    sp = tiled_splits(cfg, samples[:2], samples[2:], gen, [line], [])
    assert len(sp.bank_ids) == 2 * 6 and sp.whole_bank.shape == (2, 32, 32, 3) and sp.whole_val.shape == (1, 32, 32, 3)
    anom = np.nonzero(sp.train.group == 2)[0]  # 48x80 at scale 1: 2 x 3 tiles of 32 px, like its source
    assert len(anom) == 6 and sp.train.labels[anom].tolist() == [0, 0, 1, 0, 0, 0]
    assert sp.train.exclude[anom[0]] == [f"000#{k}" for k in range(6)]
    assert sp.train.images[anom[0]].std() > 20  # away from the edit: the sharp source texture, not the black anomaly


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
