"""End to end through the CLI on a tiny LOCO-layout category: train, resume, predict, export, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from comgen.cli import main as cli
from comgen.io import append_jsonl, write_png
from comgen.rundir import RunDir

from .conftest import toy_image

readers = pytest.importorskip("comgen.data.readers")
pytest.importorskip("comgen.evaluate.maps")

CAT = "toy"


def _toy_loco(root: Path) -> Path:
    """A tiny MVTec-LOCO-layout category of the toy world; test images are 96x80 (not the working size)."""
    import cv2

    rng = np.random.default_rng(0)
    cat = root / CAT
    for split, n in (("train", 10), ("validation", 4)):
        for i in range(n):
            write_png(cat / split / "good" / f"{i:03d}.png", toy_image(rng, 64, "good")[0])
    for label, kind in (("good", "good"), ("logical_anomalies", "extra"), ("structural_anomalies", "missing")):
        for i in range(3):
            img, mask = toy_image(rng, 64, kind)
            write_png(cat / "test" / label / f"{i:03d}.png", cv2.resize(img, (80, 96)))
            if label != "good":
                m = cv2.resize(mask.astype(np.uint8) * 255, (80, 96), interpolation=cv2.INTER_NEAREST)
                write_png(cat / "ground_truth" / label / f"{i:03d}" / "000.png", m)
    return root


def _hand_made_generated_set(run: RunDir, samples: list, n: int) -> None:
    """A generated set in the contract layout: a train image with a pasted magenta square and its mask."""
    out = run.generated("compositional")
    rng = np.random.default_rng(0)
    for i in range(n):
        smp = samples[i % len(samples)]
        img = smp.load_image().copy()
        h, w = img.shape[:2]
        s = max(4, h // 6)
        y, x = rng.integers(0, h - s), rng.integers(0, w - s)
        img[y:y + s, x:x + s] = (255, 0, 255)
        mask = np.zeros((h, w), np.uint8)
        mask[y:y + s, x:x + s] = 255
        aid = f"{i:06d}"
        write_png(out / "images" / f"{aid}.png", img)
        write_png(out / "masks" / f"{aid}.png", mask)
        append_jsonl(out / "manifest.jsonl", {
            "id": aid, "file": f"images/{aid}.png", "mask": f"masks/{aid}.png", "kind": "contamination",
            "category": "structural", "classes": [], "tokens": [], "prompt": "", "params": {}, "density": None,
            "source": str(smp.path), "backend": "compositional", "gate": None})


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("cli")
    data = _toy_loco(root / "data")
    cat = CAT
    run = RunDir.create(root / "run", data, cat)
    ds = readers.open_dataset(data)
    _hand_made_generated_set(run, ds.samples(cat, "train"), 8)
    rc = cli(["train", str(run.root), "--epochs", "2", "--image-size", "64", "--weights", "random",
              "--batch-size", "4"])
    assert rc == 0
    return run.root, data, cat


def test_train_writes_detector_and_resume_is_a_no_op(cli_run: tuple[Path, Path, str]) -> None:
    run, _, _ = cli_run
    det = run / "detector"
    assert (det / "best.safetensors").is_file() and (det / "calibration.json").is_file()
    before = (det / "history.jsonl").read_text()
    assert cli(["train", str(run), "--resume"]) == 0  # all epochs done: recalibrates only
    assert (det / "history.jsonl").read_text() == before


def test_predict_dataset_images_use_exchange_layout(cli_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    import tifffile

    from comgen.evaluate.maps import map_path

    run, data, cat = cli_run
    test_dir = data / cat / "test"
    before = sorted(p for p in data.rglob("*"))
    assert cli(["predict", str(run), str(test_dir), "--out", str(tmp_path / "pred")]) == 0
    assert sorted(p for p in data.rglob("*")) == before  # nothing written into the dataset
    samples = readers.open_dataset(data).samples(cat, "test")
    for smp in samples:
        amap = tifffile.imread(map_path(tmp_path / "pred" / "maps", smp))
        assert amap.shape == smp.load_image().shape[:2] and amap.dtype == np.float32
    rows = (tmp_path / "pred" / "scores.csv").read_text().splitlines()
    assert len(rows) == len(samples) + 1
    assert cli(["predict", str(run), str(test_dir), "--out", str(test_dir / "out")]) == 2


def test_predict_dataset_api(cli_run: tuple[Path, Path, str]) -> None:
    from comgen.detect.predict import predict_dataset

    run, data, cat = cli_run
    rows = predict_dataset(run)
    assert len(rows) == len(readers.open_dataset(data).samples(cat, "test"))
    assert (run / "maps" / "scores.csv").is_file()


def test_export_cli(cli_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    run, _, _ = cli_run
    assert cli(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    spec = json.loads((tmp_path / "m.onnx.json").read_text())
    assert spec["image_size"] == 64 and "threshold" in spec["calibration"]
    assert cli(["export", str(run), "--bundle", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["image_size"] == 64


def test_export_cli_needs_a_target(cli_run: tuple[Path, Path, str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    run, _, _ = cli_run
    assert cli(["export", str(run)]) == 2
    assert cli(["export", str(run), "--onnx", str(tmp_path / "m.onnx"), "--openvino"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: export") and "--bundle" in err[0] and "--openvino" in err[1]
    assert not (tmp_path / "m.onnx").exists()


def test_cli_bad_input(cli_run: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, data, cat = cli_run
    img = next((data / cat / "test").rglob("*.png"))
    assert cli(["predict", str(tmp_path / "nope"), str(img), "--out", str(tmp_path / "o")]) == 2
    assert cli(["predict", str(run), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli(["predict", str(run), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 3 and all(line.startswith("error: ") for line in err[-3:])
    fresh = RunDir.create(tmp_path / "fresh", data, cat)
    assert cli(["train", str(fresh.root), "--epochs", "1"]) == 2  # no generated set yet
    assert "comgen generate" in capsys.readouterr().err
