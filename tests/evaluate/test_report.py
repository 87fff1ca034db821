"""The HTML report renders and every image it references exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from comgen.evaluate.report import write_report
from comgen.evaluate.run import evaluate_dataset
from tests.evaluate.loco_fixture import write_maps


def test_report_renders_with_existing_images(loco, tmp_path: Path):
    rng = np.random.default_rng(0)
    write_maps(loco, tmp_path / "maps", lambda s, u: (rng.random(u.shape) + 0.5 * u).astype(np.float32))
    out = tmp_path / "out"
    report = write_report(evaluate_dataset(loco, "all", tmp_path / "maps"), out, gallery=2)
    text = report.read_text()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")
    assert "AUC-sPRO@0.05" in text and "Lowest-scored anomalies" in text and "Per defect type" in text
    srcs = re.findall(r"<img src='([^']+)'", text)
    assert len(srcs) == 1 + 2 + 2  # curves + 2 good + 2 anomalous
    for src in srcs:
        assert not Path(src).is_absolute()
        img = cv2.imread(str(out / src))
        assert img is not None and img.size > 0, src
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["categories"]["box"]["metrics"]["mean"]["spro"] <= 1.0
