"""Calibration of a trained detector on the validation split: score normalisation, threshold, composition prior.

Why: the image score must mean the same on every run (a z-score of normal validation logits) and the pass/fail
threshold must come from normal images only; when the run has a component model, the composition prior is fitted
here and the threshold is re-derived on the fused score.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from comgen.components.model import ComponentModel
from comgen.detect.artifacts import CALIBRATION, finite_number, read_calibration
from comgen.detect.composition_prior import PRIOR_DIR, CompositionPrior, fuse_scores
from comgen.detect.config import DetectorConfig
from comgen.detect.data import Splits
from comgen.detect.tiling import image_max, prior_inputs
from comgen.errors import ArtifactError, ConfigError
from comgen.io import atomic_write_json
from comgen.rundir import RunDir

#: calibration.json key: the validation normals' image scores, which a new threshold is chosen from
VAL_SCORES = "val_normal_scores"

def _check_finite(values: np.ndarray, what: str) -> None:
    """Why: a NaN here becomes a NaN threshold or scale in calibration.json, and every image would then "pass"."""
    bad = int((~np.isfinite(np.asarray(values, np.float64))).sum())
    if bad:
        raise ArtifactError("calibration", f"{bad} NaN/infinite validation {what}: the best checkpoint is unusable; "
                                           "retrain with a lower --lr")


def calibrate(logits: np.ndarray, labels: np.ndarray, map_mean: float, map_std: float, quantile: float,
              group: np.ndarray | None = None) -> dict[str, Any]:
    """Score normalisation and threshold from the validation normals.

    Scores are z-scores of the normal (tile) logits; in tiled mode an image's score is its tiles' maximum, and the
    threshold is the ``quantile`` of the normal images' scores.
    """
    _check_finite(logits, "image logits")
    _check_finite(np.array([map_mean, map_std]), "map statistics")
    normal = logits[labels == 0]
    mean = float(normal.mean())
    std = float(normal.std()) if len(normal) > 1 and float(normal.std()) > 1e-6 else 1.0
    img_scores = image_max((logits - mean) / std, group)
    img_labels = image_max(labels.astype(np.float64), group)
    z = img_scores[img_labels == 0]
    cal: dict[str, Any] = {"score_mean": mean, "score_std": std,
                           "threshold": float(np.quantile(z, quantile)), "quantile": quantile,
                           "map_mean": float(map_mean), "map_std": float(max(map_std, 1e-6)),
                           "n_val_normal": int(len(z)), "n_val_anomalous": int((img_labels == 1).sum()),
                           VAL_SCORES: [float(v) for v in z]}
    if (img_labels == 1).any() and (img_labels == 0).any():
        cal["val_auroc_generated"] = float(roc_auc_score(img_labels, img_scores))
    return cal


def attach_prior(run: RunDir, splits: Splits, cfg: DetectorConfig, cal: dict[str, Any], val_logits: np.ndarray,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Fit the composition prior (``composition_prior.py``) and re-derive the threshold on the fused scores.

    Returns the calibration's ``prior`` entry; updates ``cal`` in place (threshold, validation AUROC).
    """
    out = run.detector / PRIOR_DIR
    why = None
    if not cfg.prior.enabled:
        why = "disabled in the config"
    elif not (run.components / "model.json").is_file():
        why = "the run has no component model (`comgen learn`)"
    if why is not None:
        if out.exists():
            shutil.rmtree(out)
        log(f"composition prior off: {why}")
        return {"enabled": False, "reason": why}
    model = ComponentModel.load(run.components)
    bank_images, val_images, labels, val_logits = prior_inputs(splits, cfg, val_logits)  # whole images when tiled
    log("fitting the composition prior on the training normals")
    prior = CompositionPrior.fit(model, bank_images, cfg=cfg.prior)
    nll = prior.nll(val_images)  # segmented once: normals calibrate, anomalies give the validation AUROC
    _check_finite(nll, "composition log-densities")
    prior.calibrate(nll[labels == 0])
    z_prior = prior.z(nll)
    z_net = (val_logits - cal["score_mean"]) / cal["score_std"]
    fused = fuse_scores(z_net, z_prior, cfg.prior.fuse)
    cal["threshold_network"] = cal["threshold"]
    cal["threshold"] = float(np.quantile(fused[labels == 0], cfg.threshold_quantile))
    cal[VAL_SCORES] = [float(v) for v in fused[labels == 0]]
    entry: dict[str, Any] = {"enabled": True, "fuse": cfg.prior.fuse, "nll_mean": prior.mean, "nll_std": prior.std}
    if (labels == 1).any() and (labels == 0).any():
        entry["val_auroc_generated_prior"] = float(roc_auc_score(labels, z_prior))
        cal["val_auroc_generated_network"] = cal.get("val_auroc_generated")
        cal["val_auroc_generated"] = float(roc_auc_score(labels, fused))
    prior.save(out)
    return entry


def choose_threshold(cal: dict[str, Any], where: Path, max_false_reject: float | None = None,
                     quantile: float | None = None, score: float | None = None) -> tuple[float, dict[str, Any]]:
    """A new pass/fail threshold from exactly one rule, and the rule as recorded beside it.

    ``max_false_reject`` P: the lowest threshold that rejects at most P of the validation normals; ``quantile`` Q: the
    Q-quantile of their scores (training's own rule); ``score`` S: S itself. Why from stored scores: a factory sets
    its false-reject budget after training, and retraining for it would change the detector.
    """
    bounds = {"max_false_reject": {"ge": 0.0, "lt": 1.0}, "quantile": {"gt": 0.0, "le": 1.0}, "score": {}}
    given = {k: v for k, v in (("max_false_reject", max_false_reject), ("quantile", quantile), ("score", score))
             if v is not None}
    if len(given) != 1:
        raise ConfigError("calibrate", "give exactly one of --max-false-reject, --quantile, --score")
    (rule, value), = given.items()
    value = finite_number(value, f"calibrate.{rule}", error=ConfigError, **bounds[rule])
    if rule == "score":
        return value, {"rule": rule, "value": value}
    scores = cal.get(VAL_SCORES)
    if not isinstance(scores, list) or not scores:
        raise ArtifactError(where, f"no stored validation scores ({VAL_SCORES}); retrain with this comgen to set a "
                                   "threshold by rule, or give --score")
    normal = np.sort([finite_number(v, where, VAL_SCORES) for v in scores])
    if rule == "quantile":
        return float(np.quantile(normal, value)), {"rule": rule, "value": value}
    n_reject = int(math.floor(value * len(normal)))  # the highest n_reject normals may fail, no more
    threshold = float(normal[len(normal) - 1 - n_reject])
    return threshold, {"rule": rule, "value": value,
                       "false_reject_on_validation": float(np.mean(normal > threshold))}


def set_threshold(run: RunDir, **rule: float | None) -> tuple[float, float, dict[str, Any]]:
    """Write the run's new threshold (``choose_threshold``'s rule) into its calibration: (old, new, rule record).

    Only the threshold and its rule change; the detector, its score scale and its stored scores stay as trained.
    """
    path = run.detector / CALIBRATION
    cal = read_calibration(run.detector)
    new, record = choose_threshold(cal, path, **rule)
    old = float(cal["threshold"])
    cal["threshold"], cal["threshold_rule"] = new, record
    atomic_write_json(path, cal)
    return old, new, record
