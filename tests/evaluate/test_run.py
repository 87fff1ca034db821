"""evaluate_category on a tiny LOCO dataset: conventions, exactness end to end, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comgen.errors import InputError
from comgen.evaluate.groundtruth import ground_truth_from_masks
from comgen.evaluate.maps import map_path, score_row, write_scores_csv
from comgen.evaluate.run import EvalConfig, evaluate_category, evaluate_dataset, metrics_json
from comgen.records import DefectSpec
from tests.evaluate.loco_fixture import ANOMALIES, DEFECTS, write_maps
from tests.evaluate.test_metrics import _dense_reference, _ref_auc


def test_perfect_maps_give_one_for_every_group(loco, tmp_path: Path):
    write_maps(loco, tmp_path / "maps", lambda s, u: u.astype(np.float32))
    r = evaluate_category(loco, "box", tmp_path / "maps")
    assert r["protocol"] == "loco" and r["summary"] == "mean" and r["image_score"] == "map_max"
    assert set(r["metrics"]) == {"logical", "structural", "mean"}
    for m in r["metrics"].values():
        assert m["image_auroc"] == m["pixel_auroc"] == m["aupro"] == m["spro"] == 1.0
        assert set(m["auc_spro"]) == {"0.01", "0.05", "0.1", "0.3", "1"}
    assert r["metrics"]["logical"]["n_channels"] == 4  # the two masks of one image stay separate


def test_mean_is_average_of_logical_and_structural_not_pooled(loco, tmp_path: Path):
    samples = write_maps(loco, tmp_path / "maps", lambda s, u: np.zeros(u.shape, np.float32))
    value = {"good": 0.5, "logical_anomalies": 1.0, "structural_anomalies": 0.0}
    write_scores_csv(tmp_path / "maps" / "scores.csv", [score_row(s, value[s.label]) for s in samples])
    m = evaluate_category(loco, "box", tmp_path / "maps")["metrics"]
    assert m["logical"]["image_auroc"] == 1.0 and m["structural"]["image_auroc"] == 0.0
    assert m["mean"]["image_auroc"] == 0.5  # pooled good-vs-all would be 9/15 = 0.6
    r = evaluate_category(loco, "box", tmp_path / "maps", EvalConfig(image_score="max"))
    assert r["image_score"] == "map_max" and r["metrics"]["logical"]["image_auroc"] == 0.5


def test_the_shipped_decision_is_scored(loco, tmp_path: Path):
    """F1, false-reject and escape rates at the detector's own threshold (the CSV's decision), and the best F1."""
    samples = write_maps(loco, tmp_path / "maps", lambda s, u: np.zeros(u.shape, np.float32))
    value = {"good": 0.5, "logical_anomalies": 1.0, "structural_anomalies": 0.0}
    rows = [score_row(s, value[s.label], decision=value[s.label] > 0.75) for s in samples]  # fails logical only
    write_scores_csv(tmp_path / "maps" / "scores.csv", rows)
    m = evaluate_category(loco, "box", tmp_path / "maps")["metrics"]
    assert m["logical"]["f1"] == 1.0 and m["logical"]["escape_rate"] == 0.0
    assert m["logical"]["false_reject_rate"] == 0.0
    assert m["structural"]["f1"] == 0.0 and m["structural"]["escape_rate"] == 1.0
    assert m["logical"]["best_f1"] == 1.0 and m["logical"]["best_f1_threshold"] == 1.0
    write_scores_csv(tmp_path / "maps" / "scores.csv", [score_row(s, value[s.label]) for s in samples])
    assert "f1" not in evaluate_category(loco, "box", tmp_path / "maps")["metrics"]["logical"]  # no decisions


def test_per_defect_results_give_each_branch_alone(loco, tmp_path: Path):
    samples = write_maps(loco, tmp_path / "maps", lambda s, u: np.zeros(u.shape, np.float32))
    logical = sorted(s.image_id for s in samples if s.label == "logical_anomalies")

    def network(s) -> float:  # finds the images with a missing item (the first two), not the last one
        if s.label == "good":
            return 0.5
        return 0.0 if s.label == "logical_anomalies" and s.image_id == logical[2] else 1.0

    rows = [{**score_row(s, 1.0 if s.is_anomalous else 0.0), "network_score": network(s),
             "prior_score": 1.0 if s.is_anomalous else 0.0} for s in samples]
    write_scores_csv(tmp_path / "maps" / "scores.csv", rows)
    d = evaluate_category(loco, "box", tmp_path / "maps")["per_defect"]
    assert d["missing_item"]["image_auroc_network"] == 1.0  # images 0 and 1 against the good ones
    assert d["extra_item"]["image_auroc_network"] == 0.5  # image 1 found, image 2 scored below every good one
    assert all(m["image_auroc_prior"] == m["image_auroc"] == 1.0 for m in d.values())


def test_noisy_maps_match_dense_reference_per_subset(loco, tmp_path: Path):
    rng = np.random.default_rng(7)
    maps = {}

    def noisy(s, u):
        m = np.round((rng.random(u.shape) + 0.4 * u) * 50) / 50  # ~70 levels: ties, and a fast dense reference
        maps[(s.label, s.image_id)] = m = m.astype(np.float32)
        return m

    samples = write_maps(loco, tmp_path / "maps", noisy)
    r = evaluate_category(loco, "box", tmp_path / "maps")
    specs = {d["pixel_value"]: DefectSpec(d["defect_name"], d["pixel_value"], d["saturation_threshold"],
                                          d["relative_saturation"]) for d in DEFECTS}
    for subset, label in (("logical", "logical_anomalies"), ("structural", "structural_anomalies")):
        chosen = [s for s in samples if s.label in ("good", label)]
        gts = [None if s.label == "good" else ground_truth_from_masks(s.load_masks(), specs) for s in chosen]
        x, tpr, pro, spro = _dense_reference([maps[(s.label, s.image_id)] for s in chosen], gts)
        got = r["metrics"][subset]
        assert got["spro"] == pytest.approx(_ref_auc(x, spro, 0.05), abs=1e-4)
        assert got["auc_spro"]["1"] == pytest.approx(_ref_auc(x, spro, 1.0), abs=1e-4)
        assert got["aupro"] == pytest.approx(_ref_auc(x, pro, 0.3), abs=1e-4)
        assert got["pixel_auroc"] == pytest.approx(_ref_auc(x, tpr, 1.0), abs=1e-4)
        assert got["n_anomalous"] == len(ANOMALIES[label])
    # LOCO per-defect-type sPRO: good images + images holding the defect; sPRO of that defect's channels only
    assert set(r["per_defect"]) == {"missing_item", "extra_item", "scratch"}
    for name in r["per_defect"]:
        chosen = [s for s in samples if s.label == "good"
                  or name in ground_truth_from_masks(s.load_masks(), specs).defects]
        gts = [None if s.label == "good" else ground_truth_from_masks(s.load_masks(), specs) for s in chosen]
        x, _, _, spro = _dense_reference([maps[(s.label, s.image_id)] for s in chosen], gts, spro_defect=name)
        assert r["per_defect"][name]["spro"] == pytest.approx(_ref_auc(x, spro, 0.05), abs=1e-4)
        assert r["per_defect"][name]["n_anomalous"] == len(chosen) - 3


def test_bad_input_is_reported_with_the_file(loco, tmp_path: Path):
    import tifffile

    maps = tmp_path / "maps"
    samples = write_maps(loco, maps, lambda s, u: u.astype(np.float32))
    victim = map_path(maps, samples[-1])
    victim.unlink()
    with pytest.raises(InputError, match=f"{victim.name}: missing anomaly map"):
        evaluate_category(loco, "box", maps)
    tifffile.imwrite(victim, np.zeros((10, 10), np.float32))
    with pytest.raises(InputError, match=f"{victim.name}: anomaly map is 10x10 but its image is 48x40"):
        evaluate_category(loco, "box", maps)
    bad = np.zeros((40, 48), np.float32)
    bad[0, 0] = np.nan
    tifffile.imwrite(victim, bad)
    with pytest.raises(InputError, match=f"{victim.name}: anomaly map contains 1 NaN"):
        evaluate_category(loco, "box", maps)
    tifffile.imwrite(victim, np.zeros((40, 48), np.float32))
    write_scores_csv(maps / "scores.csv", [score_row(s, 0.0) for s in samples[:-1]])
    with pytest.raises(InputError, match=r"scores\.csv: no score for test image"):
        evaluate_category(loco, "box", maps)


def test_evaluate_dataset_all_and_metrics_json(loco, tmp_path: Path):
    write_maps(loco, tmp_path / "maps", lambda s, u: u.astype(np.float32))
    res = evaluate_dataset(loco, "all", tmp_path / "maps")
    assert list(res["categories"]) == ["box"]
    doc = metrics_json(res)
    assert "curves" not in doc["categories"]["box"] and len(doc["categories"]["box"]["images"]) == 8
    from comgen.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown category"):
        evaluate_dataset(loco, "nope", tmp_path / "maps")


def test_mvtec_ad_layout_reports_per_defect_type(tmp_path: Path):
    readers = pytest.importorskip("comgen.data.readers")
    from comgen.evaluate.maps import write_map
    from comgen.io import write_png

    root = tmp_path / "ad" / "bottle"
    rng = np.random.default_rng(0)
    write_png(root / "train" / "good" / "000.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    truth = {}
    for label, n in (("good", 2), ("crack", 2), ("hole", 1)):
        for i in range(n):
            write_png(root / "test" / label / f"{i:03d}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
            m = np.zeros((32, 32), np.uint8)
            if label != "good":
                m[4 + 5 * i:12 + 5 * i, 6:20] = 255
                write_png(root / "ground_truth" / label / f"{i:03d}_mask.png", m)
            truth[(label, f"{i:03d}")] = m > 0
    ds = readers.open_dataset(root)
    assert ds.layout == "mvtec_ad"
    for s in ds.samples("bottle", "test"):
        write_map(tmp_path / "maps", s, truth[(s.label, s.image_id)].astype(np.float32))
    r = evaluate_category(ds, "bottle", tmp_path / "maps")
    assert r["protocol"] == "per_defect_type" and r["summary"] == "all"
    assert set(r["metrics"]) == {"crack", "hole", "all"}
    for m in r["metrics"].values():
        assert m["image_auroc"] == m["pixel_auroc"] == m["aupro"] == 1.0
        assert m["auc_spro"] is None and m["spro"] is None  # no defects_config.json: no saturation defined
    assert r["metrics"]["crack"]["n_anomalous"] == 2 and r["metrics"]["all"]["n_anomalous"] == 3
