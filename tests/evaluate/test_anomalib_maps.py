"""anomalib's predict batches become maps that ``comgen evaluate --anomalib-maps`` scores, sPRO included.

Why anomalib's own dataclasses: the helper must read what ``Engine.predict`` really returns (``ImageBatch`` with a
torchvision ``Mask`` anomaly map, its ``NumpyImageBatch`` twin), not a look-alike written for the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from sklearn.metrics import roc_auc_score

from comgen.cli import main
from comgen.errors import InputError
from comgen.evaluate.anomalib_maps import convert_anomalib_maps, write_anomalib_predictions
from tests.evaluate.loco_fixture import H, W, union_mask

SMALL = (H // 2, W // 2)  # anomalib's maps come at the model's input size, not the image's


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _batches(loco, scores: dict[str, float], size: int = 3) -> list:
    """anomalib batches of the test images: GT-shaped maps at half size and the given scores."""
    torch = pytest.importorskip("torch")
    image_batch = pytest.importorskip("anomalib.data").ImageBatch
    samples = loco.samples("box", "test")
    out = []
    for start in range(0, len(samples), size):
        chunk = samples[start:start + size]
        maps = [cv2.resize(union_mask(s.label, int(s.image_id)).astype(np.float32), SMALL[::-1],
                           interpolation=cv2.INTER_AREA) for s in chunk]
        batch = image_batch(image=torch.zeros(len(chunk), 3, *SMALL), image_path=[str(s.path) for s in chunk],
                            anomaly_map=torch.from_numpy(np.stack(maps)[:, None]),
                            pred_score=torch.tensor([scores[f"{s.label}/{s.image_id}"] for s in chunk]))
        out.append(batch.to_numpy() if start == 0 else batch)  # both of anomalib's batch kinds
    return out


def test_predict_batches_are_scored_with_spro(loco, tmp_path: Path, capsys) -> None:
    samples = loco.samples("box", "test")
    rng = np.random.default_rng(0)
    scores = {f"{s.label}/{s.image_id}": float(rng.normal(1.0 if s.is_anomalous else 0.0, 1.0)) for s in samples}
    before = _tree(loco.root)
    pred = write_anomalib_predictions(_batches(loco, scores), loco.root, tmp_path / "anomalib")
    assert (pred / "box" / "test" / "logical_anomalies" / "000.npy").is_file() and (pred / "scores.csv").is_file()
    out = tmp_path / "eval"
    assert main(["evaluate", str(loco.root), "-c", "box", "--anomalib-maps", str(pred), "--out", str(out)]) == 0
    assert _tree(loco.root) == before  # the dataset is only read
    result = json.loads((out / "metrics.json").read_text())["categories"]["box"]
    assert result["image_score"].startswith("csv:")
    for group in ("logical", "structural"):  # image AUROC of anomalib's pred_score, good vs the group
        chosen = [s for s in samples if s.kind in ("good", group)]
        expected = roc_auc_score([s.is_anomalous for s in chosen], [scores[f"{s.label}/{s.image_id}"] for s in chosen])
        assert result["metrics"][group]["image_auroc"] == pytest.approx(expected)
    # the maps follow the ground truth: upsampled to 40x48 and aligned with their own images, sPRO is high
    assert result["metrics"]["mean"]["spro"] > 0.9 and result["metrics"]["mean"]["pixel_auroc"] > 0.95
    converted = tifffile.imread(out / "maps" / "box" / "test" / "structural_anomalies" / "001.tiff")
    assert converted.shape == (H, W) and converted[union_mask("structural_anomalies", 1)].mean() > 0.5
    assert "converted 8 anomalib maps" in capsys.readouterr().out


def test_tiff_maps_by_hand_without_scores_use_the_map_maximum(loco, tmp_path: Path) -> None:
    samples = loco.samples("box", "test")
    src = tmp_path / "by_hand"
    for s in samples:
        path = src / Path(s.path).relative_to(loco.root).with_suffix(".tiff")
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, union_mask(s.label, int(s.image_id)).astype(np.float32))
    assert convert_anomalib_maps(loco.root, samples, src, tmp_path / "maps") is None
    assert main(["evaluate", str(loco.root), "--anomalib-maps", str(src), "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())["categories"]["box"]
    assert result["image_score"] == "map_max" and result["metrics"]["mean"]["spro"] == 1.0


def _one_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_predictions_are_one_line(loco, tmp_path: Path, capsys) -> None:
    scores = {f"{s.label}/{s.image_id}": 0.5 for s in loco.samples("box", "test")}
    pred = write_anomalib_predictions(_batches(loco, scores), loco.root, tmp_path / "p")
    base = ["evaluate", str(loco.root), "--out", str(tmp_path / "o")]
    assert "either --maps or --anomalib-maps" in _one_line(capsys, base)
    assert "either --maps or --anomalib-maps" in _one_line(capsys, [*base, "--maps", str(pred),
                                                                    "--anomalib-maps", str(pred)])
    victim = pred / "box" / "test" / "good" / "001.npy"
    np.save(victim, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # a pickle is never loaded
    assert "001.npy: not a readable map" in _one_line(capsys, [*base, "--anomalib-maps", str(pred)])
    np.save(victim, np.full(SMALL, np.nan, np.float32))
    assert "001.npy: anomaly map contains" in _one_line(capsys, [*base, "--anomalib-maps", str(pred)])
    victim.unlink()
    assert "001.npy: missing anomaly map" in _one_line(capsys, [*base, "--anomalib-maps", str(pred)])
    with pytest.raises(InputError, match="inside the dataset"):
        write_anomalib_predictions(_batches(loco, scores), loco.root, loco.root / "box" / "preds")
    with pytest.raises(InputError, match="outside the dataset root"):
        write_anomalib_predictions(_batches(loco, scores), tmp_path / "elsewhere", tmp_path / "p2")
