"""A damaged or foreign bundle stops with one line naming the file, never a traceback or NaN scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from comgen.errors import ArtifactError
from comgen.export_runtime.bundle import read_arrays, read_manifest

GOOD = {"format": 1, "image_size": 64, "tiles": 1, "k": 2, "fusion": {"rule": "weighted"}, "graphs": {}, "bank": {},
        "arrays": {},
        "calibration": {"score_mean": 0.0, "score_std": 1.0, "map_mean": 0.0, "map_std": 1.0, "threshold": 2.0}}


def _write(d: Path, manifest: dict) -> Path:
    d.mkdir(exist_ok=True)
    (d / "bundle.json").write_text(json.dumps(manifest))
    return d


def test_manifest_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not an export bundle"):
        read_manifest(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="bundle.json: not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="format 8 is not one of 1, 2, 3, 4, 5, 6, 7"):
        read_manifest(_write(tmp_path, {**GOOD, "format": 8}))
    with pytest.raises(ArtifactError, match="format True"):
        read_manifest(_write(tmp_path, {**GOOD, "format": True}))
    with pytest.raises(ArtifactError, match="'bank' missing"):
        read_manifest(_write(tmp_path, {k: v for k, v in GOOD.items() if k != "bank"}))
    bad = {**GOOD, "calibration": {**GOOD["calibration"], "score_std": 0.0}}
    with pytest.raises(ArtifactError, match="calibration.score_std"):
        read_manifest(_write(tmp_path, bad))
    with pytest.raises(ArtifactError, match="bundle.json: tiles is 2: tiled detectors cannot run from a bundle"):
        read_manifest(_write(tmp_path, {**GOOD, "tiles": 2}))
    assert read_manifest(_write(tmp_path, GOOD))["k"] == 2
    assert read_manifest(_write(tmp_path, {**GOOD, "format": 2}))["format"] == 2  # may list more learner seeds
    assert read_manifest(_write(tmp_path, {**GOOD, "format": 3}))["format"] == 3  # may score count patterns
    assert read_manifest(_write(tmp_path, {**GOOD, "format": 4}))["format"] == 4  # may read bands as background
    assert read_manifest(_write(tmp_path, {**GOOD, "format": 5}))["format"] == 5  # may split classes by shape modes
    assert read_manifest(_write(tmp_path, {**GOOD, "format": 6}))["format"] == 6  # may find a surface's pieces
    assert read_manifest(_write(tmp_path, {**GOOD, "format": 7}))["format"] == 7  # may grow parts and islands


def test_array_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="bank.safetensors: missing"):
        read_arrays(tmp_path, "bank.safetensors", {"descriptors": [2, 3]})
    (tmp_path / "bank.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ArtifactError, match="unreadable"):
        read_arrays(tmp_path, "bank.safetensors", {"descriptors": [2, 3]})
    save_file({"descriptors": np.zeros((2, 3), np.float32)}, str(tmp_path / "bank.safetensors"))
    with pytest.raises(ArtifactError, match=r"shape \[2, 3\], the manifest says \[2, 4\]"):
        read_arrays(tmp_path, "bank.safetensors", {"descriptors": [2, 4]})
    with pytest.raises(ArtifactError, match="'projection' missing"):
        read_arrays(tmp_path, "bank.safetensors", {"projection": [2, 3]})
    save_file({"descriptors": np.full((2, 3), np.nan, np.float32)}, str(tmp_path / "bank.safetensors"))
    with pytest.raises(ArtifactError, match="NaN"):
        read_arrays(tmp_path, "bank.safetensors", {"descriptors": [2, 3]})
