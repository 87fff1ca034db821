"""``comgen generate --export-anomalib``: anomalib's own ``Folder`` datamodule reads the set, masks aligned."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from comgen.cli import main
from comgen.io import write_png

SIZE = 40


def _dataset(root: Path, n_train: int = 4) -> Path:
    """A folder dataset of normal images alone: widget/train/good."""
    rng = np.random.default_rng(0)
    for i in range(n_train):
        image = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (5, 5), 1.0)
        write_png(root / "widget" / "train" / "good" / f"{i:03d}.png", image)
    return root


def _generate(data: Path, tmp_path: Path, export: Path, n: int = 5, *extra: str) -> int:
    return main(["generate", str(data), "-c", "widget", "--backend", "cutpaste", "--n", str(n), "--image-size", "32",
                 "--out", str(tmp_path / "run"), "--export-anomalib", str(export), *extra])


def _png(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imread(str(path), flags)


def test_export_is_read_by_anomalibs_folder_datamodule(tmp_path: Path) -> None:
    folder_cls = pytest.importorskip("anomalib.data").Folder
    data, export = _dataset(tmp_path / "data"), tmp_path / "anomalib"
    assert _generate(data, tmp_path, export) == 0
    abnormal = sorted(p.name for p in (export / "abnormal").iterdir())
    assert len(abnormal) == 5 and sorted(p.name for p in (export / "mask").iterdir()) == abnormal
    assert len(list((export / "normal").iterdir())) == 4
    for name in abnormal:
        mask = _png(export / "mask" / name)
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
    assert _png(export / "normal" / "000.png").shape == (32, 32, 3)  # normals at the anomalies' size

    dm = folder_cls(name="widget", root=export, normal_dir="normal", abnormal_dir="abnormal", mask_dir="mask",
                    train_batch_size=4, eval_batch_size=16, num_workers=0, seed=0)
    dm.setup()
    train = next(iter(dm.train_dataloader()))
    assert not train.gt_label.any() and all(Path(p).parent.name == "normal" for p in train.image_path)
    seen = 0
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        for path, label, gt_mask, image in zip(batch.image_path, batch.gt_label, batch.gt_mask, batch.image):
            if not label:
                continue
            seen += 1
            ours = _png(export / "mask" / Path(path).name) > 127
            assert np.array_equal(gt_mask.numpy(), ours), path  # the mask of this very image
            rgb = cv2.cvtColor(_png(Path(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            assert np.allclose(image.permute(1, 2, 0).numpy() * 255, rgb, atol=1)
    assert seen == 5  # every generated anomaly is in anomalib's validation or test split


def test_reexport_replaces_and_bad_folders_are_one_line(tmp_path: Path, capsys) -> None:
    data, export = _dataset(tmp_path / "data"), tmp_path / "anomalib"
    assert _generate(data, tmp_path, export, 5) == 0
    import shutil

    shutil.rmtree(tmp_path / "run")
    assert _generate(data, tmp_path, export, 3) == 0  # a new, smaller set replaces the export
    assert len(list((export / "abnormal").iterdir())) == 3 == len(list((export / "mask").iterdir()))
    capsys.readouterr()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    for target, problem in ((foreign, "not empty"), (data / "widget" / "export", "inside the dataset")):
        assert _generate(data, tmp_path, target) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and problem in err
    assert (foreign / "keep.txt").read_text() == "mine" and not (data / "widget" / "export").exists()
