"""Map exchange format: TIFF layout, validation, scores CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from comgen.errors import InputError
from comgen.evaluate.maps import (map_path, read_map, read_scores_csv, score_row, scores_by_key, write_map,
                                  write_scores_csv)
from comgen.io import write_png
from comgen.records import Sample


@pytest.fixture
def sample(tmp_path: Path) -> Sample:
    img = tmp_path / "ds" / "box" / "test" / "logical_anomalies" / "003.png"
    write_png(img, np.zeros((40, 48, 3), np.uint8))
    return Sample(img, "box", "test", "logical_anomalies", "logical", "003")


def test_layout_and_round_trip(tmp_path: Path, sample: Sample):
    maps = tmp_path / "maps"
    assert map_path(maps, sample) == maps / "box" / "test" / "logical_anomalies" / "003.tiff"
    amap = np.random.rand(40, 48).astype(np.float32)
    path = write_map(maps, sample, amap)
    raw = tifffile.imread(path)  # what MVTec's scripts read
    assert raw.dtype == np.float32 and raw.shape == (40, 48)
    assert np.array_equal(read_map(maps, sample), amap)
    assert not list(path.parent.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_tif_suffix_accepted(tmp_path: Path, sample: Sample):
    path = map_path(tmp_path, sample).with_suffix(".tif")
    path.parent.mkdir(parents=True)
    tifffile.imwrite(path, np.ones((40, 48), np.float64))
    assert read_map(tmp_path, sample).dtype == np.float32


def test_bad_maps_raise_one_line_errors(tmp_path: Path, sample: Sample):
    with pytest.raises(InputError, match=r"003\.tiff: anomaly map is 64x64 but its image is 48x40"):
        write_map(tmp_path, sample, np.zeros((64, 64), np.float32))
    with pytest.raises(InputError, match=r"missing anomaly map"):
        read_map(tmp_path / "nowhere", sample)
    path = map_path(tmp_path, sample)
    path.parent.mkdir(parents=True)
    nan_map = np.zeros((40, 48), np.float32)
    nan_map[3, 4] = np.nan
    tifffile.imwrite(path, nan_map)
    with pytest.raises(InputError, match=r"003\.tiff: anomaly map contains 1 NaN"):
        read_map(tmp_path, sample)
    tifffile.imwrite(path, np.zeros((48, 40), np.float32))  # transposed
    with pytest.raises(InputError, match=r"is 40x48 but its image is 48x40"):
        read_map(tmp_path, sample)
    path.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="not a readable TIFF"):
        read_map(tmp_path, sample)
    with pytest.raises(InputError, match="NaN"):
        write_map(tmp_path, sample, nan_map)


def test_scores_csv_round_trip_and_errors(tmp_path: Path, sample: Sample):
    rows = [score_row(sample, 0.25, decision=True), {**score_row(sample, 1.5), "image_id": "004"}]
    path = write_scores_csv(tmp_path / "scores.csv", rows)
    header = path.read_text().splitlines()[0]
    assert header == "category,split,label,image_id,path,score,decision"
    back = read_scores_csv(path)
    assert [r["score"] for r in back] == [0.25, 1.5] and [r["decision"] for r in back] == [1, None]
    assert ("box", "test", "logical_anomalies", "003") in scores_by_key(back)
    bad = tmp_path / "bad.csv"
    bad.write_text("category,split,label,image_id,path,score\nbox,test,good,000,x.png,0.1\nbox,test,good,001,y.png,abc\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 3: score 'abc' is not a number"):
        read_scores_csv(bad)
    bad.write_text("category,label,image_id,score\n")
    with pytest.raises(InputError, match="lacks column"):
        read_scores_csv(bad)
    with pytest.raises(InputError, match="NaN"):
        write_scores_csv(tmp_path / "n.csv", [score_row(sample, float("nan"))])


def test_scores_csv_keeps_the_detector_branch_columns(tmp_path: Path, sample: Sample):
    rows = [{**score_row(sample, 2.0), "network_score": 0.5, "prior_score": 2.0},
            {**score_row(sample, 0.1), "image_id": "004", "network_score": 0.1, "prior_score": float("nan")}]
    path = write_scores_csv(tmp_path / "scores.csv", rows)
    assert path.read_text().splitlines()[0].endswith(",score,network_score,prior_score")
    back = read_scores_csv(path)
    assert [r["network_score"] for r in back] == [0.5, 0.1]
    assert [r["prior_score"] for r in back] == [2.0, None]  # a branch that did not run reads as missing
    plain = read_scores_csv(write_scores_csv(tmp_path / "plain.csv", [score_row(sample, 1.0)]))
    assert "network_score" not in plain[0]
