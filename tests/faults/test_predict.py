"""Prediction on someone else's folder: a bad image costs one line, and no map overwrites another."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from comgen.cli import main
from comgen.detect.predict import predict_dataset, predict_paths
from comgen.errors import DatasetError
from comgen.io import write_png
from comgen.rundir import RunDir
from tests.detect.conftest import SIZE, tiny_config, toy_image, toy_splits

CAT = "toy"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detector trained for one epoch on the toy world (its folder is copied into each test's run)."""
    from comgen.detect.train import train_detector

    root = tmp_path_factory.mktemp("trained")
    train_detector(root, tiny_config(epochs=1), splits=toy_splits(), log=lambda m: None, cpu=True)
    return root / "detector"


def _toy_folder_dataset(root: Path) -> Path:
    """A folder-layout category of toy images: train/good and test/{good,bad}."""
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(root / CAT / "train" / "good" / f"{i:03d}.png", toy_image(rng, SIZE, "good")[0])
    for label, kind in (("good", "good"), ("bad", "extra")):
        for i in range(3):
            write_png(root / CAT / "test" / label / f"{i:03d}.png", toy_image(rng, SIZE, kind)[0])
    return root


def _run(tmp_path: Path, trained: Path) -> RunDir:
    data = _toy_folder_dataset(tmp_path / "data")
    run = RunDir.create(tmp_path / "run", data, CAT)
    shutil.copytree(trained, run.root / "detector")
    return run


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_bad_image_is_skipped_and_strict_writes_nothing(trained: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    run = _run(tmp_path, trained)
    inp = tmp_path / "in"
    rng = np.random.default_rng(1)
    write_png(inp / "a.png", toy_image(rng, SIZE, "good")[0])
    (inp / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_png(inp / "c.png", np.zeros((1, 1, 3), np.uint8))
    write_png(inp / "d.png", toy_image(rng, SIZE, "extra")[0])
    out = tmp_path / "out"
    assert main(["predict", str(run.root), str(inp), "--out", str(out), "--batch-size", "1"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
    assert len(err) == 3 and str(inp / "b.png") in err[0] and str(inp / "c.png") in err[1], err
    assert "2 of 4" in err[2]
    with open(out / "scores.csv") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["a", "d"]
    assert {p.name for p in _files(out / "maps")} == {"a.tiff", "d.tiff"}

    strict = tmp_path / "strict"
    assert main(["predict", str(run.root), str(inp), "--out", str(strict), "--batch-size", "1", "--strict"]) == 2
    assert str(inp / "b.png") in capsys.readouterr().err
    assert _files(strict) == []  # the map of a.png (the batch before) is not left behind either


def test_predict_dataset_skips_a_bad_test_image(trained: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, trained)
    bad = Path(run.info.dataset) / CAT / "test" / "bad" / "001.png"
    bad.write_bytes(b"not an image")
    lines: list[str] = []
    rows = predict_dataset(run, maps_root=tmp_path / "maps", batch_size=2, log=lines.append)
    assert len(rows) == 5 and len(lines) == 2 and str(bad) in lines[0]
    assert (tmp_path / "maps" / "scores.csv").read_text().count("\n") == 6  # header + 5 rows
    with pytest.raises(DatasetError, match="cannot decode"):
        predict_dataset(run, maps_root=tmp_path / "strict", batch_size=2, strict=True)
    assert _files(tmp_path / "strict") == []


def test_colliding_names_give_distinct_maps(trained: Path, tmp_path: Path) -> None:
    run = _run(tmp_path, trained)
    rng = np.random.default_rng(2)
    sizes = {"c1/x.png": 64, "c2/x.png": 72, "c3/x_1.png": 80}  # each map has its image's size
    for rel, size in sizes.items():
        write_png(tmp_path / "in" / rel, toy_image(rng, size, "good")[0])
    files = [tmp_path / "in" / rel for rel in sizes]
    for k, inputs in enumerate((files, [f.parent for f in files])):  # as files, then as folders
        out = tmp_path / f"out{k}"
        rows = predict_paths(run.root, inputs, out, log=lambda m: None)
        assert len({r["map"] for r in rows}) == 3 and len({r["name"] for r in rows}) == 3
        for row, size in zip(rows, sizes.values()):
            assert tifffile.imread(row["map"]).shape == (size, size)
        assert len(_files(out / "maps")) == 3 and len(_files(out / "overlays")) == 3
    from comgen.detect.predict import unique_names

    assert unique_names(["x", "x", "x_1", "X"]) == ["x", "x_2", "x_1", "X_3"]  # X is x on a macOS disk
