"""Fault suite, saved artefacts: nothing is unpickled, and a corrupt or non-finite file stops with one line.

Each test copies the shared toy detector (or a small saved composition prior) before corrupting it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file, save_file

from comgen.cli import main as cli
from comgen.detect.artifacts import LEGACY_STATE, STATE, STATE_TENSORS, load_state
from comgen.detect.composition_prior import CompositionPrior
from comgen.detect.predict import Detector
from comgen.errors import ArtifactError
from comgen.io import write_png
from comgen.rundir import RunDir
from tests.detect import conftest as detect_fixtures

trained_run = detect_fixtures.trained_run  # the shared toy detector, trained once per worker


class _Payload:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def _copy(trained_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _edit_calibration(det: Path, change) -> None:  # noqa: ANN001
    cal = json.loads((det / "calibration.json").read_text())
    change(cal)
    (det / "calibration.json").write_text(json.dumps(cal))


# --- no unpickling --------------------------------------------------------------------------------------------
def test_crafted_state_pt_is_refused_by_train_resume_and_never_run(trained_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained_run, tmp_path)
    RunDir.create(run, tmp_path / "data", "toy")  # a run directory the CLI accepts (training stops before data)
    det = run / "detector"
    (det / STATE).unlink()
    (det / STATE_TENSORS).unlink()
    marker = tmp_path / "pwned"
    torch.save({"epoch": 1, "head": _Payload(marker)}, det / LEGACY_STATE)
    assert cli(["train", str(run), "--resume", "--cpu"]) == 2
    err = _one_line_error(capsys)
    assert LEGACY_STATE in err and "retrain" in err
    assert not marker.exists()
    with pytest.raises(ArtifactError, match="never loaded"):
        load_state(det)
    assert not marker.exists()


def test_state_round_trip_gives_the_training_objects_back(trained_run: Path) -> None:
    state = load_state(trained_run / "detector")
    assert state["epoch"] == 3 and isinstance(state["optimizer"]["param_groups"][0]["betas"], tuple)
    assert state["rng"]["torch"].dtype == torch.uint8 and state["rng"]["numpy"][1].dtype == np.uint32
    assert isinstance(state["rng"]["python"][1], tuple) and len(state["rng"]["python"][1]) == 625
    assert set(state["optimizer"]["state"]) == set(range(len(state["optimizer"]["param_groups"][0]["params"])))


def test_state_tensors_of_another_checkpoint_are_refused(trained_run: Path, tmp_path: Path) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    tensors = load_file(str(det / STATE_TENSORS))
    tensors["rng/torch"] = tensors["rng/torch"].clone()
    tensors["rng/torch"][0] ^= 1
    save_file(tensors, str(det / STATE_TENSORS))
    with pytest.raises(ArtifactError, match="checksum"):
        load_state(det)


# --- non-finite and malformed values ----------------------------------------------------------------------------
def test_nan_weights_in_best_are_refused(trained_run: Path, tmp_path: Path) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    weights = load_file(str(det / "best.safetensors"))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(det / "best.safetensors"))
    with pytest.raises(ArtifactError, match=r"best\.safetensors.*NaN"):
        Detector.load(det.parent, device="cpu")


def test_nan_threshold_fails_predict_with_one_line(trained_run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained_run, tmp_path)
    _edit_calibration(run / "detector", lambda c: c.update(threshold=float("nan")))
    image = tmp_path / "in" / "a.png"
    write_png(image, np.full((64, 64, 3), 128, np.uint8))
    assert cli(["predict", str(run), str(image), "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "calibration.json" in err and "threshold" in err
    assert not (tmp_path / "out" / "scores.csv").exists()


@pytest.mark.parametrize("key, value", [
    ("threshold", "high"), ("threshold", float("inf")), ("score_std", 0.0), ("score_std", -1.0),
    ("score_std", float("nan")), ("map_std", 0.0), ("map_std", float("inf")), ("score_mean", None)])
def test_bad_calibration_number_is_refused(trained_run: Path, tmp_path: Path, key: str, value: object) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    _edit_calibration(det, lambda c: c.update({key: value}))
    with pytest.raises(ArtifactError, match=rf"calibration\.json: {key} must be a finite number"):
        Detector.load(det.parent, device="cpu")


def test_prior_zero_std_in_calibration_is_refused(trained_run: Path, tmp_path: Path) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    _edit_calibration(det, lambda c: c.update(prior={"enabled": True, "fuse": "max", "nll_mean": 1.0, "nll_std": 0.0}))
    with pytest.raises(ArtifactError, match=r"prior\.nll_std must be a finite number > 0"):
        Detector.load(det.parent, device="cpu")


def test_malformed_fusion_entry_names_the_calibration_file(trained_run: Path, tmp_path: Path) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    _edit_calibration(det, lambda c: c.update(fusion={"rule": "mean", "weights": {"network": 1.0}}))
    with pytest.raises(ArtifactError, match=r"detector[/\\]calibration\.json: fusion entry is missing or malformed"):
        Detector.load(det.parent, device="cpu")


def test_truncated_calibration_json_is_refused(trained_run: Path, tmp_path: Path) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    text = (det / "calibration.json").read_text()
    (det / "calibration.json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Detector.load(det.parent, device="cpu")


@pytest.mark.parametrize("broken", ["list", "missing", "string"])
def test_mistyped_calibration_json_is_refused(trained_run: Path, tmp_path: Path, broken: str) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    cal = json.loads((det / "calibration.json").read_text())
    if broken == "list":
        cal = [cal]
    elif broken == "missing":
        del cal["map_std"]
    else:
        cal["score_mean"] = str(cal["score_mean"])
    (det / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(ArtifactError, match="calibration.json"):
        Detector.load(det.parent, device="cpu")


def test_nan_bank_features_are_refused(trained_run: Path, tmp_path: Path) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    path = det / "bank" / "patches.safetensors"
    tensors = load_file(str(path))
    tensors["scale0"].view(-1)[5] = float("nan")
    save_file(tensors, str(path))
    meta = json.loads((det / "bank" / "bank.json").read_text())
    meta["files"]["patches.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()  # consistent, yet bad
    (det / "bank" / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"patches\.safetensors.*scale0.*NaN"):
        Detector.load(det.parent, device="cpu")


def test_bank_metadata_that_is_not_text_is_refused(trained_run: Path, tmp_path: Path) -> None:
    det = _copy(trained_run, tmp_path) / "detector"
    (det / "bank" / "bank.json").write_bytes(b"\xcd\xff{" + bytes(range(200)))
    with pytest.raises(ArtifactError, match=r"bank\.json: corrupt bank metadata"):
        Detector.load(det.parent, device="cpu")


def test_manifest_with_a_damaged_middle_line_is_refused(tmp_path: Path) -> None:
    from comgen.io import read_jsonl

    path = tmp_path / "manifest.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(ArtifactError, match="line 2 is not valid JSON"):
        read_jsonl(path)
    path.write_text('{"id": "a"}\n{"id": "b"')  # a torn last line, as a crash leaves it
    assert read_jsonl(path) == [{"id": "a"}]
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ArtifactError, match="cannot read"):
        read_jsonl(path)


# --- the composition prior's files ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comgen.components.features import LearnerConfig
    from comgen.components.learner import learn_components

    rng = np.random.default_rng(0)
    images = np.stack([detect_fixtures.toy_image(rng)[0] for _ in range(16)])
    cfg = LearnerConfig(image_size=detect_fixtures.SIZE, k=3, use_backbone=False, pixels_per_image=300,
                        max_fit_pixels=6000, select_pixels=2000)
    prior = CompositionPrior.fit(learn_components(images[:10], cfg), images[:12], images[12:])
    return prior.save(tmp_path_factory.mktemp("prior") / "p")


def _prior_copy(saved_prior: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved_prior, tmp_path / "p"))


@pytest.mark.parametrize("value", [0.0, float("nan"), -2.0])
def test_prior_bad_std_is_refused(saved_prior: Path, tmp_path: Path, value: float) -> None:
    d = _prior_copy(saved_prior, tmp_path)
    cal = json.loads((d / "calibration.json").read_text())
    cal["std"] = value
    (d / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(ArtifactError, match=r"calibration\.json: std must be a finite number > 0"):
        CompositionPrior.load(d)


def test_prior_infinite_vectors_are_refused(saved_prior: Path, tmp_path: Path) -> None:
    d = _prior_copy(saved_prior, tmp_path)
    vecs = load_numpy(str(d / "vectors.safetensors"))["train"].copy()
    vecs[0, 0] = np.inf
    save_numpy({"train": vecs}, str(d / "vectors.safetensors"))
    with pytest.raises(ArtifactError, match=r"vectors\.safetensors.*infinite"):
        CompositionPrior.load(d)


def test_prior_nan_vector_entries_still_load(saved_prior: Path, tmp_path: Path) -> None:
    """NaN entries (a part absent from an image) are valid in the saved vectors and must keep loading."""
    d = _prior_copy(saved_prior, tmp_path)
    vecs = load_numpy(str(d / "vectors.safetensors"))["train"].copy()
    vecs[0, 0] = np.nan
    save_numpy({"train": vecs}, str(d / "vectors.safetensors"))
    assert np.isfinite(CompositionPrior.load(d).std)


def test_nan_validation_logits_stop_calibration() -> None:
    """The writing side: a diverged checkpoint's NaN logits never become a NaN threshold in calibration.json."""
    from comgen.detect.calibration import calibrate

    logits = np.array([0.1, float("nan"), 0.3, 2.0])
    with pytest.raises(ArtifactError, match="NaN/infinite validation image logits"):
        calibrate(logits, np.array([0, 0, 0, 1]), 0.0, 1.0, 0.99)
