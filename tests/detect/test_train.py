from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comgen.detect import train as train_mod
from comgen.detect.artifacts import load_state
from comgen.detect.train import NonFiniteLossError, train_detector
from comgen.errors import ArtifactError, ConfigError

from .conftest import tiny_config, toy_splits

QUIET = {"log": lambda m: None, "cpu": True}


def test_training_loss_falls_and_writes_checkpoint(trained_run: Path) -> None:
    det = trained_run / "detector"
    hist = [json.loads(ln) for ln in (det / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert min(h["val_loss"] for h in hist[1:]) < hist[0]["val_loss"]
    for name in ("config.yaml", "best.safetensors", "head.safetensors", "state.json", "state.safetensors",
                 "calibration.json", "bank"):
        assert (det / name).exists(), name
    cal = json.loads((det / "calibration.json").read_text())
    assert cal["n_val_normal"] == 4 and cal["score_std"] > 0 and np.isfinite(cal["threshold"])
    assert cal["val_auroc_generated"] >= 0.5


def test_batches_mix_at_ratio() -> None:
    labels = np.array([0] * 12 + [1] * 3, np.float32)
    cfg = tiny_config(batch_size=4, anomaly_ratio=0.5)
    batches = train_mod._batches(labels, cfg, np.random.default_rng(0))
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    assert all(int(labels[b].sum()) == 2 for b in batches)
    normals = np.concatenate([b[labels[b] == 0] for b in batches])
    assert sorted(normals.tolist()) == list(range(12))  # every normal exactly once per epoch


def test_resume_is_exact(tmp_path: Path) -> None:
    splits = toy_splits()
    full, part = tmp_path / "full", tmp_path / "part"
    train_detector(full, tiny_config(epochs=3), splits=splits, **QUIET)
    train_detector(part, tiny_config(epochs=2), splits=splits, **QUIET)  # "interrupted" after 2 epochs
    res = train_detector(part, tiny_config(epochs=3), splits=splits, resume=True, **QUIET)
    assert res.epochs_run == 3
    a, b = load_file(str(full / "detector/head.safetensors")), load_file(str(part / "detector/head.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    h_full = (full / "detector/history.jsonl").read_text().splitlines()
    h_part = (part / "detector/history.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in h_full]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in h_part]


def test_resume_refuses_other_config_and_missing_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no checkpoint"):
        train_detector(tmp_path / "empty", tiny_config(), splits=toy_splits(), resume=True, **QUIET)
    run = tmp_path / "r"
    train_detector(run, tiny_config(epochs=1), splits=toy_splits(), **QUIET)
    with pytest.raises(ConfigError, match="another config.*lr"):
        train_detector(run, tiny_config(epochs=2, lr=0.5), splits=toy_splits(), resume=True, **QUIET)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = train_mod.csda_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        total, terms = real(*args, **kwargs)
        return (total * float("nan"), terms) if calls["n"] > 6 else (total, terms)

    monkeypatch.setattr(train_mod, "csda_loss", flaky)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2.*kept"):
        train_detector(tmp_path, tiny_config(epochs=3), splits=toy_splits(), **QUIET)
    assert load_state(tmp_path / "detector")["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "detector/best.safetensors")).values())


def test_loss_target_keeps_small_defects_whole_with_max_pool() -> None:
    """A 2x2-px defect in a 4x4 cell is a 0.25 soft target with area pooling, a full positive with max pooling."""
    t = torch.zeros(1, 1, 8, 8)
    t[0, 0, 1:3, 1:3] = 1.0
    soft = train_mod.loss_target(t, (2, 2), "avg")
    hard = train_mod.loss_target(t, (2, 2), "max")
    assert soft[0, 0].tolist() == [[0.25, 0.0], [0.0, 0.0]]
    assert hard[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert train_mod.loss_target(t, (8, 8), "max") is t  # at the working size nothing changes
    with pytest.raises(ConfigError, match="target_pool"):
        tiny_config(target_pool="median")
