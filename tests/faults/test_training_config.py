"""Fault suite, training options: bad values fail with one line before anything is written, and a training that
fails leaves the previous detector whole."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from comgen.cli import main as cli
from comgen.config import ConfigBase
from comgen.detect import train as train_mod
from comgen.detect.config import DetectorConfig
from comgen.detect.predict import predict_paths
from comgen.detect.train import NonFiniteLossError, train_detector
from comgen.errors import ConfigError, InputError
from comgen.features.backbone import BackboneConfig
from comgen.io import write_png
from comgen.rundir import RunDir
from tests.detect import conftest as detect_fixtures

trained_run = detect_fixtures.trained_run  # the shared toy detector, trained once per worker


def _copy(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    RunDir.create(dst, tmp_path / "data", "toy")  # a run directory the CLI accepts
    return dst


def _snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the detector folder (weights, calibration, config, resume point, bank), byte for byte."""
    det = run / "detector"
    files = {str(p.relative_to(det)): p.read_bytes() for p in sorted(det.rglob("*")) if p.is_file()}
    assert {"best.safetensors", "calibration.json", "config.yaml"} <= set(files)
    return files


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _config_file(run: Path, tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load((run / "detector" / "config.yaml").read_text())
    data.update(changes)
    path = tmp_path / "detector.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- a failed train keeps the working detector --------------------------------------------------------------
@pytest.mark.parametrize("lr", ["abc", -1.0, float("nan")])
def test_bad_lr_fails_with_one_line_and_keeps_the_detector(trained_run: Path, tmp_path: Path, lr: object,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained_run, tmp_path)
    before = _snapshot(run)
    assert cli(["train", str(run), "--config", str(_config_file(run, tmp_path, lr=lr)), "--cpu"]) == 2
    assert re.search(r"\blr: (expected a number|must be a finite number > 0)", _one_line_error(capsys))
    assert _snapshot(run) == before


def test_nan_lr_option_fails_with_one_line(trained_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained_run, tmp_path)
    before = _snapshot(run)
    assert cli(["train", str(run), "--lr", "nan", "--cpu"]) == 2
    assert "detector.lr" in _one_line_error(capsys)
    assert _snapshot(run) == before


def test_setup_failure_leaves_the_previous_detector_whole(trained_run: Path, tmp_path: Path) -> None:
    """A value the config cannot see (here forced past its checks) fails inside the optimizer: nothing was written."""
    run = _copy(trained_run, tmp_path)
    before = _snapshot(run)
    cfg = detect_fixtures.tiny_config()
    cfg.lr = -1.0
    with pytest.raises(ValueError, match="learning rate"):
        train_detector(run, cfg, splits=detect_fixtures.toy_splits(), log=lambda m: None, cpu=True)
    assert _snapshot(run) == before


def test_nan_loss_in_the_first_epoch_leaves_the_previous_detector_whole(trained_run: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = _copy(trained_run, tmp_path)
    before = _snapshot(run)
    real = train_mod.csda_loss
    monkeypatch.setattr(train_mod, "csda_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), {}))
    with pytest.raises(NonFiniteLossError, match="untouched"):
        train_detector(run, detect_fixtures.tiny_config(seed=1), splits=detect_fixtures.toy_splits(),
                       log=lambda m: None, cpu=True)
    assert _snapshot(run) == before


# --- config values --------------------------------------------------------------------------------------------
@dataclass
class _Numbers(ConfigBase):
    ratio: float = 0.5
    count: int = 3


@pytest.mark.parametrize("data, option", [({"ratio": "0.5"}, "ratio"), ({"ratio": "1e-3"}, "ratio"),
                                          ({"ratio": True}, "ratio"), ({"count": 2.0}, "count"),
                                          ({"count": True}, "count")])
def test_wrong_scalar_types_are_refused(data: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=rf"config\.{option}: expected"):
        _Numbers.from_dict(data)


def test_string_for_a_detector_float_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"config\.weight_decay: expected a number"):
        DetectorConfig.from_dict({"weight_decay": "0.01"})


@pytest.mark.parametrize("option, value", [
    ("lr", 0.0), ("lr", float("inf")), ("weight_decay", -1e-4), ("weight_decay", float("nan")),
    ("anomaly_ratio", float("nan")), ("threshold_quantile", 0.0), ("threshold_quantile", float("nan")),
    ("augment_strength", float("nan")), ("val_fraction", 1.0), ("epochs", 0), ("batch_size", 0), ("patience", 0),
    ("seed", -1), ("mixed_precision", "fp8"), ("backend", "../x"), ("fusion_cap", -1.0),
    ("fusion_cap", float("nan"))])
def test_out_of_range_detector_options_are_refused(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"detector\.{option}"):
        DetectorConfig.from_dict({option: value})


def test_nan_in_a_nested_section_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"detector\.loss\.focal"):
        DetectorConfig.from_dict({"loss": {"focal": float("nan")}})


# --- the four former tracebacks -------------------------------------------------------------------------------
def _run_config(tmp_path: Path, detector: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"detector": detector}))
    return path


@pytest.mark.parametrize("detector, named", [({"backbone": {"layers": 5}}, "backbone.layers"),
                                             ({"backbone": {"layers": [1, 9]}}, "backbone.layers"),
                                             ({"backbone": {"layers": [2, 1]}}, "backbone.layers"),
                                             ({"bank": "xyz"}, "bank"),
                                             ({"bank": {"window": "wide"}}, "bank.window")])
def test_run_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], detector: dict,
                                        named: str) -> None:
    config = _run_config(tmp_path, detector)
    assert cli(["run", str(tmp_path / "data"), "-c", "toy", "--config", str(config), "--out",
                str(tmp_path / "out")]) == 2
    assert named in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_run_epochs_zero_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["run", str(tmp_path / "data"), "-c", "toy", "--epochs", "0", "--out", str(tmp_path / "out")]) == 2
    assert "detector.epochs" in _one_line_error(capsys)


def test_train_epochs_zero_is_one_line(trained_run: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained_run, tmp_path)
    before = _snapshot(run)
    assert cli(["train", str(run), "--epochs", "0", "--cpu"]) == 2
    assert "detector.epochs: must be an integer >= 1" in _one_line_error(capsys)
    assert _snapshot(run) == before


def test_backbone_layers_are_checked_in_the_config() -> None:
    for layers in ((), (1, 1), (0, 5), (True,)):
        with pytest.raises(ConfigError, match="backbone.layers"):
            BackboneConfig(layers=layers)
    assert BackboneConfig(layers=[0, 4]).layers == (0, 4)


@pytest.mark.parametrize("size", ["-3", "0"])
def test_predict_negative_batch_size_is_one_line(trained_run: Path, tmp_path: Path, size: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "in" / "a.png"
    write_png(image, np.full((64, 64, 3), 128, np.uint8))
    assert cli(["predict", str(trained_run), str(image), "--out", str(tmp_path / "out"), "--batch-size", size]) == 2
    assert "batch_size" in _one_line_error(capsys)
    with pytest.raises(InputError, match="batch_size"):
        predict_paths(trained_run, [image], tmp_path / "out2", batch_size=-3)
