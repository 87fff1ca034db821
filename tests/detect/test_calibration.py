"""Thresholds a user chooses after training: from the stored validation scores, for one call, and how they perform."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from comgen.cli import main
from comgen.detect.calibration import VAL_SCORES, choose_threshold
from comgen.errors import ArtifactError, ConfigError


def _copy(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def test_rules_pick_thresholds_from_the_validation_normals() -> None:
    cal = {VAL_SCORES: [float(v) for v in range(10)]}  # scores 0..9
    assert choose_threshold(cal, Path("c"), max_false_reject=0.0)[0] == 9.0  # no normal fails
    t, rec = choose_threshold(cal, Path("c"), max_false_reject=0.2)
    assert t == 7.0 and rec["false_reject_on_validation"] == pytest.approx(0.2)  # 8 and 9 fail
    assert choose_threshold(cal, Path("c"), quantile=0.5)[0] == pytest.approx(4.5)
    assert choose_threshold(cal, Path("c"), score=3.25)[0] == 3.25
    for bad in ({}, {"quantile": 0.5, "score": 1.0}, {"max_false_reject": 1.0}, {"quantile": 0.0},
                {"score": float("nan")}):
        with pytest.raises(ConfigError):
            choose_threshold(cal, Path("c"), **bad)
    with pytest.raises(ArtifactError, match="retrain"):
        choose_threshold({}, Path("c"), quantile=0.5)
    with pytest.raises(ArtifactError, match="val_normal_scores must be a finite number"):
        choose_threshold({VAL_SCORES: [1.0, float("nan")]}, Path("c"), quantile=0.5)


def test_training_stores_the_validation_scores(trained_run: Path) -> None:
    cal = json.loads((trained_run / "detector" / "calibration.json").read_text())
    scores = np.array(cal[VAL_SCORES])
    assert len(scores) == cal["n_val_normal"] and np.isfinite(scores).all()
    assert cal["threshold"] == pytest.approx(np.quantile(scores, cal["quantile"]))


def test_calibrate_and_predict_threshold_from_the_command_line(trained_run: Path, tmp_path: Path, capsys) -> None:
    from .conftest import toy_image

    run = _copy(trained_run, tmp_path)
    assert main(["calibrate", str(run), "--max-false-reject", "0"]) == 0
    cal = json.loads((run / "detector" / "calibration.json").read_text())
    assert cal["threshold"] == max(cal[VAL_SCORES]) and cal["threshold_rule"]["rule"] == "max_false_reject"
    assert "->" in capsys.readouterr().out
    assert main(["calibrate", str(run)]) == 2  # no rule given: one line
    assert capsys.readouterr().err.startswith("error: calibrate: give exactly one")

    import cv2

    rng = np.random.default_rng(3)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), toy_image(rng)[0][:, :, ::-1])
    for threshold, want in (("-1e9", "fail"), ("1e9", "pass")):
        out = tmp_path / f"preds{want}"
        assert main(["predict", str(run), str(folder), "--out", str(out), "--threshold", threshold]) == 0
        rows = (out / "scores.csv").read_text().splitlines()[1:]
        assert len(rows) == 3 and all(f",{want}," in r or r.endswith(f",{want}") for r in rows), rows
