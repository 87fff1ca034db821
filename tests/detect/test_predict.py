from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from comgen.detect.predict import Detector, check_output_dir, expand_inputs, predict_paths, to_rgb_uint8
from comgen.errors import ArtifactError, ConfigError, InputError
from comgen.io import write_png

from .conftest import SIZE, toy_image


@pytest.fixture(scope="module")
def detector(trained_run: Path) -> Detector:
    return Detector.load(trained_run, device="cpu")


def test_predict_scores_and_maps_at_original_size(detector: Detector) -> None:
    rng = np.random.default_rng(5)
    good = [toy_image(rng, SIZE, "good")[0] for _ in range(3)]
    bad = [toy_image(rng, SIZE, k)[0] for k in ("missing", "extra", "missing")]
    scores, maps = detector.predict(good + bad, batch_size=4, notice=None)
    assert scores.shape == (6,) and maps.shape == (6, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    assert scores[3:].mean() > scores[:3].mean()  # learned something on the toy world


def test_each_map_carries_its_image_score(trained_run: Path) -> None:
    """By default an image ranked by its map's maximum (MVTec's scripts) is ranked as by its score, at any original
    size: each maximum is the score on the validation normals' map scale."""
    import cv2

    from comgen.evaluate.map_score import peak_targets

    detector = Detector.load(trained_run, device="cpu")
    assert detector.cfg.map_carries_score and detector.map_peak is not None
    rng = np.random.default_rng(6)
    images = [toy_image(rng, SIZE, k)[0] for k in ("good", "missing", "extra")]
    images[1] = cv2.resize(images[1], (90, 50))
    scores, maps = detector.predict(images, notice=None)
    assert [m.shape for m in maps] == [(SIZE, SIZE), (50, 90), (SIZE, SIZE)]
    np.testing.assert_allclose([m.max() for m in maps], peak_targets(scores, detector.map_peak), atol=1e-5)
    assert set(detector.last_parts) >= {"network", "memory"}
    np.testing.assert_allclose(scores, detector.fusion.apply(detector.last_parts), atol=1e-6)


def test_short_training_ranks_defect_pixels_first(detector: Detector) -> None:
    """Three epochs are enough for the map to put the changed region above the rest of the image.

    Why: with the pixel logits starting at a zero bias (before ``csda.MAP_PRIOR_BIAS``) this toy detector's map
    ranked its defect pixels at only 0.58-0.67 pixel AUROC over three seeds (measured ad hoc).
    """
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(11)
    pairs = [toy_image(rng, SIZE, k) for k in ("missing", "extra") * 3]
    _, maps = detector.predict([p[0] for p in pairs], batch_size=6, notice=None)
    masks = np.stack([p[1] for p in pairs])
    assert roc_auc_score(masks.ravel(), maps.ravel()) > 0.75  # 0.83 here; 0.58-0.67 over three seeds from a zero bias


def test_predict_resizes_and_converts_with_one_notice(detector: Detector) -> None:
    rng = np.random.default_rng(1)
    big = toy_image(rng, 96, "good")[0]
    gray = toy_image(rng, SIZE, "good")[0].mean(axis=2).astype(np.uint8)
    rgba = np.dstack([toy_image(rng, 80, "extra")[0], np.full((80, 80), 255, np.uint8)])
    notes: list[str] = []
    scores, maps = detector.predict([big, gray, rgba], notice=notes.append)
    assert isinstance(maps, list) and [m.shape for m in maps] == [(96, 96), (SIZE, SIZE), (80, 80)]
    assert len(notes) == 1 and "resized 2 image(s)" in notes[0] and "gray" in notes[0] and "RGBA" in notes[0]
    same, _ = detector.predict([gray], notice=None)
    assert same[0] == pytest.approx(scores[1], rel=1e-5, abs=1e-5)  # batch size changes float32 kernels only


def test_bad_inputs(detector: Detector, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty image list"):
        detector.predict([])
    with pytest.raises(InputError, match="NaN"):
        to_rgb_uint8(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="empty image list"):
        expand_inputs([])
    with pytest.raises(InputError, match="no images found"):
        expand_inputs([tmp_path])
    with pytest.raises(InputError, match="inside the input"):
        check_output_dir(tmp_path / "out", [tmp_path])


def test_no_checkpoint_and_foreign_config(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.yaml").write_text("dataset: x\ncategory: y\n")
    with pytest.raises(ArtifactError, match="no trained detector|no checkpoint"):
        Detector.load(tmp_path / "run")
    with pytest.raises(ArtifactError, match="no such run directory"):
        Detector.load(tmp_path / "missing")
    copy = tmp_path / "copy"
    shutil.copytree(trained_run / "detector", copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["head"]["dim"] = 24
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="another config"):
        Detector.load(copy)
    (copy / "best.safetensors").unlink()
    with pytest.raises(ArtifactError, match="no checkpoint"):
        Detector.load(copy)


def test_predict_paths_writes_maps_scores_overlays(detector: Detector, trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("comgen.data.imageio")
    inp = tmp_path / "in"
    rng = np.random.default_rng(3)
    write_png(inp / "a.png", toy_image(rng, 80, "good")[0])
    write_png(inp / "sub" / "b.png", toy_image(rng, SIZE, "extra")[0])
    before = sorted(p.relative_to(inp) for p in inp.rglob("*"))
    out = tmp_path / "out"
    rows = predict_paths(trained_run, [inp], out, detector=detector, log=lambda m: None)
    assert sorted(p.relative_to(inp) for p in inp.rglob("*")) == before  # nothing written into the input
    assert [r["name"] for r in rows] == ["a", "sub__b"]
    import tifffile

    assert tifffile.imread(out / "maps" / "a.tiff").shape == (80, 80)
    assert tifffile.imread(out / "maps" / "sub__b.tiff").shape == (SIZE, SIZE)
    assert (out / "overlays" / "a.png").is_file() and (out / "overlays" / "sub__b.png").is_file()
    with open(out / "scores.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["decision"] in ("pass", "fail") for r in table] == [True, True]
    assert float(table[0]["threshold"]) == pytest.approx(detector.threshold)
    with pytest.raises(InputError, match="inside the input"):
        predict_paths(trained_run, [inp], inp / "out", detector=detector)


def test_compiled_predict_matches_eager(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import comgen.compiled as compiled

    rng = np.random.default_rng(9)
    images = [toy_image(rng, SIZE, k)[0] for k in ("good", "missing", "extra")]
    monkeypatch.setenv("COMGEN_COMPILE", "0")
    eager_scores, eager_maps = Detector.load(trained_run, device="cpu").predict(images, notice=None)
    monkeypatch.setenv("COMGEN_COMPILE", "1")
    monkeypatch.setattr("comgen.detect.predict.COMPILE_MIN_IMAGES", 1)  # compile even for this small job
    scores, maps = Detector.load(trained_run, device="cpu").predict(images, notice=None)
    assert "CSDAHead.forward" not in compiled._failed  # the head really ran compiled
    np.testing.assert_allclose(scores, eager_scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(maps, eager_maps, rtol=1e-4, atol=1e-4)


def test_only_large_jobs_compile(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from comgen.detect.predict import COMPILE_MIN_IMAGES

    compiled_fns: list[object] = []

    def record(fn, **kw):  # noqa: ANN001, ANN003, ANN202 - stands in for torch.compile, runs fn unchanged
        compiled_fns.append(fn)
        return fn

    monkeypatch.setenv("COMGEN_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", record)
    det = Detector.load(trained_run, device="cpu")
    images = [toy_image(np.random.default_rng(3), SIZE, "good")[0]] * 2
    det.predict(images, notice=None)  # a small job: eager
    assert not compiled_fns
    det.predict(images, notice=None, job_size=COMPILE_MIN_IMAGES)  # one chunk of a large job: compiled
    assert any(getattr(f, "__name__", "") == "forward" for f in compiled_fns)
