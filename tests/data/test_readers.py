"""Readers for the MVTec LOCO, MVTec AD and folder layouts, auto-detection, and every structural bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from comgen.data.readers import open_dataset
from comgen.errors import DatasetError
from tests.data.fixtures import LOCO_DEFECTS, build_folder, build_loco, build_mvtec_ad, img, save, snapshot


def _all(ds, cat):
    return {split: ds.samples(cat, split) for split in ("train", "validation", "test")}


def test_loco_reader(tmp_path):
    root = build_loco(tmp_path / "loco")
    before = snapshot(root)
    ds = open_dataset(root)
    assert ds.layout == "loco" and ds.categories() == ["box"]
    s = _all(ds, "box")
    assert [len(s[k]) for k in ("train", "validation", "test")] == [3, 1, 4]
    test = {(x.label, x.image_id): x for x in s["test"]}
    assert test[("good", "000")].kind == "good" and test[("good", "000")].mask_paths == []
    log0 = test[("logical_anomalies", "000")]
    assert log0.kind == "logical" and len(log0.mask_paths) == 2  # several masks per image
    assert test[("structural_anomalies", "000")].kind == "structural"
    d = ds.defects("box")
    assert d["missing_thing"].pixel_value == 255 and d["scratch"].relative_saturation is True
    assert s["train"][0].load_image().shape == (32, 32, 3)
    assert snapshot(root) == before  # readers never write into a dataset


def test_mvtec_ad_reader(tmp_path):
    root = build_mvtec_ad(tmp_path / "ad")
    ds = open_dataset(root)
    assert ds.layout == "mvtec_ad"
    assert ds.samples("bottle", "validation") == [] and ds.defects("bottle") == {}
    test = ds.samples("bottle", "test")
    assert sorted({x.label for x in test}) == ["broken", "crack", "good"]
    broken = [x for x in test if x.label == "broken"]
    assert all(x.kind == "defect" and len(x.mask_paths) == 1 for x in broken)
    assert broken[1].mask_paths[0].name == "001_mask.png"


def test_folder_reader_single_category_root(tmp_path):
    root = build_folder(tmp_path / "mydata")
    ds = open_dataset(root)
    assert ds.layout == "folder" and ds.categories() == ["mydata"]
    test = {x.image_id: x for x in ds.samples("mydata", "test")}
    assert test["d"].kind == "defect" and test["d"].mask_paths[0].name == "d.png"
    assert test["e"].mask_paths == []  # ground truth is optional in the folder layout
    assert len(ds.samples("mydata", "train")) == 2


def test_single_loco_category_root_and_explicit_layout(tmp_path):
    root = build_loco(tmp_path / "loco")
    ds = open_dataset(root / "box", layout="loco")
    assert ds.categories() == ["box"] and len(ds.samples("box", "test")) == 4


def test_unknown_layout_and_category(tmp_path):
    root = build_loco(tmp_path / "loco")
    with pytest.raises(DatasetError, match="unknown layout"):
        open_dataset(root, layout="coco")
    with pytest.raises(DatasetError, match="no category 'x'"):
        open_dataset(root).samples("x", "train")
    with pytest.raises(DatasetError, match="no category found"):
        open_dataset(tmp_path / "loco" / "box" / "train" / "good")


# -- bad input rows ---------------------------------------------------------------------------------

def test_missing_split_folder(tmp_path):
    root = build_loco(tmp_path / "loco")
    shutil.rmtree(root / "box" / "validation")
    (root / "box" / "defects_config.json").unlink()  # still detected as LOCO through test/logical_anomalies
    with pytest.raises(DatasetError, match="missing validation split folder") as exc:
        open_dataset(root)
    assert str(root / "box" / "validation") in str(exc.value)
    ad = build_mvtec_ad(tmp_path / "ad")
    shutil.rmtree(ad / "bottle" / "test")
    shutil.rmtree(ad / "bottle" / "ground_truth")
    only_normal = open_dataset(ad)  # train/good alone is a dataset: nothing labelled to test on
    assert only_normal.samples("bottle", "test") == [] and only_normal.samples("bottle", "train")


def test_empty_split(tmp_path):
    root = build_loco(tmp_path / "loco")
    for f in (root / "box" / "train" / "good").iterdir():
        f.unlink()
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match="empty train split") as exc:
        ds.samples("box", "train")
    assert "train/good" in str(exc.value)


def test_empty_test_label_folder(tmp_path):
    root = build_mvtec_ad(tmp_path / "ad")
    (root / "bottle" / "test" / "hole").mkdir()
    with pytest.raises(DatasetError, match="empty test folder"):
        open_dataset(root).samples("bottle", "test")


def test_ground_truth_without_image(tmp_path):
    root = build_loco(tmp_path / "loco")
    save(root / "box" / "ground_truth" / "logical_anomalies" / "007" / "000.png", img(0)[:, :, 0])
    with pytest.raises(DatasetError, match="no matching anomalous image") as exc:
        open_dataset(root).samples("box", "test")
    assert "007" in str(exc.value)
    ad = build_mvtec_ad(tmp_path / "ad")
    (ad / "bottle" / "test" / "crack" / "000.png").rename(ad / "bottle" / "test" / "crack" / "005.png")
    with pytest.raises(DatasetError, match="000_mask.png: ground truth with no matching"):
        open_dataset(ad).samples("bottle", "test")


def test_unexpected_loco_test_folder(tmp_path):
    root = build_loco(tmp_path / "loco")
    save(root / "box" / "test" / "weird" / "000.png", img(0))
    with pytest.raises(DatasetError, match="unexpected test folder"):
        open_dataset(root).samples("box", "test")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps({"defect_name": "x"}), "expected a JSON list"),
    (json.dumps([{"defect_name": "x", "pixel_value": 3}]), "lacks saturation_threshold, relative_saturation"),
    (json.dumps([dict(LOCO_DEFECTS[0], pixel_value=300)]), "pixel_value must be an integer in 1..255"),
    (json.dumps([dict(LOCO_DEFECTS[0], relative_saturation="yes")]), "relative_saturation must be true or false"),
    (json.dumps([dict(LOCO_DEFECTS[0], saturation_threshold=-1)]), "saturation_threshold must be a positive"),
    (json.dumps([LOCO_DEFECTS[0], dict(LOCO_DEFECTS[1], pixel_value=255)]), "pixel_value 255 used by both"),
    (json.dumps([LOCO_DEFECTS[0], LOCO_DEFECTS[0]]), "appears twice"),
])
def test_malformed_defects_config(tmp_path, content, problem):
    root = build_loco(tmp_path / "loco")
    cfg = root / "box" / "defects_config.json"
    cfg.write_text(content)
    with pytest.raises(DatasetError, match=problem) as exc:
        open_dataset(root).defects("box")
    assert str(exc.value).startswith(str(cfg)) and "\n" not in str(exc.value)
