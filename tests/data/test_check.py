"""``check_dataset`` pixel-level validation and the ``comgen data check`` CLI (table, one-line errors, exit 2)."""

from __future__ import annotations

import numpy as np
import pytest

from comgen.cli import main
from comgen.data.check import check_dataset
from comgen.errors import DatasetError
from tests.data.fixtures import build_folder, build_loco, build_mvtec_ad, save, snapshot


def test_check_counts_and_defects(tmp_path):
    root = build_loco(tmp_path / "loco")
    before = snapshot(root)
    summary = check_dataset(root)
    rows = {(r.split, r.label): r for r in summary.rows}
    assert rows[("test", "logical_anomalies")].images == 2 and rows[("test", "logical_anomalies")].masks == 3
    assert rows[("test", "logical_anomalies")].defects == {"missing_thing": 2}
    assert rows[("test", "structural_anomalies")].defects == {"scratch": 1}
    assert rows[("train", "good")].sizes == {(32, 32)}
    assert summary.n_images == 8
    assert snapshot(root) == before
    ad = check_dataset(build_mvtec_ad(tmp_path / "ad"))
    assert {r.label: dict(r.defects) for r in ad.rows if r.split == "test"}["broken"] == {"broken": 2}
    assert check_dataset(build_folder(tmp_path / "f")).n_images == 5


def test_corrupt_image_found_by_check(tmp_path):
    root = build_loco(tmp_path / "loco")
    bad = root / "box" / "test" / "good" / "000.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="corrupt") as exc:
        check_dataset(root)
    assert str(bad) in str(exc.value)


def test_mask_size_differs_from_image(tmp_path):
    root = build_loco(tmp_path / "loco")
    m = root / "box" / "ground_truth" / "structural_anomalies" / "000" / "000.png"
    save(m, np.full((16, 32), 254, np.uint8))
    with pytest.raises(DatasetError, match="mask is 32x16 but its image 000.png is 32x32") as exc:
        check_dataset(root)
    assert str(exc.value).startswith(str(m))


def test_mask_value_not_declared(tmp_path):
    root = build_loco(tmp_path / "loco")
    save(root / "box" / "ground_truth" / "structural_anomalies" / "000" / "000.png", np.full((32, 32), 9, np.uint8))
    with pytest.raises(DatasetError, match="pixel value 9 is not a pixel_value"):
        check_dataset(root)


def test_cli_prints_table(tmp_path, capsys):
    root = build_loco(tmp_path / "loco")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "logical_anomalies" in out and "missing_thing: 2" in out and "loco" in out


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    root = build_loco(tmp_path / "loco")
    cfg = root / "box" / "defects_config.json"
    cfg.write_text("[{")
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {cfg}: not valid JSON")
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
