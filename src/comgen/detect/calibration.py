"""Calibration of a trained detector on the validation split: score normalisation, branches, fusion, threshold.

Why: the image score must mean the same on every run (a z-score of normal validation scores) and the pass/fail
threshold must come from normal images only. The composition prior (when the run has a component model), the
patch memory and the global branch are fitted here, each branch is standardised on the validation normals, the
fusion rule is chosen on the validation split (``fusion.py``), and the threshold is derived on the fused score.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from comgen.components.model import ComponentModel
from comgen.detect.artifacts import CALIBRATION, finite_number, read_calibration
from comgen.detect.composition_branch import BRANCH_DIR, branch_scores, save_branch, train_branch
from comgen.detect.composition_prior import (
    PRIOR_DIR,
    CompositionPrior,
    counterpart_or_none,
    segment_maps,
)
from comgen.detect.config import DetectorConfig
from comgen.detect.data import Splits
from comgen.detect.fusion import choose_fusion
from comgen.detect.global_branch import GLOBAL_DIR, GlobalBranch, describe
from comgen.detect.patch_memory import MEMORY_DIR, PatchMemory
from comgen.detect.tiling import image_max, is_tiled, prior_inputs
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


def _branch_off(out: Path, what: str, why: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The calibration entry of a branch that does not run; its folder from an earlier training is removed."""
    if out.exists():
        shutil.rmtree(out)
    log(f"{what} off: {why}")
    return {"enabled": False, "reason": why}


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


@dataclass
class Segmented:
    """The component model and the class maps of the images that calibration segments once for every branch."""

    model: ComponentModel
    bank: np.ndarray  # class maps of the training normals
    val: np.ndarray  # class maps of the validation images (normals and held-out generated anomalies)


def attach_prior(run: RunDir, splits: Splits, cfg: DetectorConfig, log: Callable[[str], None]
                 ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None, Segmented | None]:
    """Fit the composition prior (``composition_prior.py``) and standardise it on the validation normals.

    Returns the calibration's ``prior`` entry, the prior's validation z-scores, its count patterns' validation
    z-scores (the ``counts`` branch; None when off) and the class maps it segmented (None when the prior is off).
    """
    out = run.detector / PRIOR_DIR
    why = None
    if not cfg.prior.enabled:
        why = "disabled in the config"
    elif not (run.components / "model.json").is_file():
        why = "the run has no component model (`comgen learn`)"
    if why is not None:
        return _branch_off(out, "composition prior", why, log), None, None, None
    model = ComponentModel.load(run.components)
    bank_images, val_images, labels = prior_inputs(splits, cfg)  # whole images when tiled
    twin = None
    if cfg.prior.partner:
        log("learning the composition prior's counterpart model (instance stage toggled)")
        twin = counterpart_or_none(model, bank_images, log)
    log("fitting the composition prior on the training normals")
    # normals calibrate, anomalies rank the fusion candidates
    prior, z, counts, bank, val = CompositionPrior.fit_seed(model, twin, bank_images, val_images, labels == 0,
                                                            cfg.prior)
    seg = Segmented(model, bank, val)
    if cfg.prior.learner_seeds > 1:
        seeds = [model.cfg.seed + i for i in range(1, cfg.prior.learner_seeds)]
        z = prior.fit_members(seeds, bank_images, val_images, labels == 0, z, log)
    _check_finite(z, "composition-prior scores (a non-finite composition log-density)")
    prior.save(out)
    entry = {"enabled": True, "nll_mean": prior.mean, "nll_std": prior.std, "partner": prior.partner is not None,
             "learner_seeds": 1 + len(prior.members), "counts": counts is not None}
    return entry, z, counts, seg


def attach_composition(directory: Path, seg: Segmented | None, splits: Splits, cfg: DetectorConfig,
                       log: Callable[[str], None]) -> tuple[dict[str, Any], np.ndarray | None]:
    """Train the composition branch (``composition_branch.py``) on the class maps of the training normals, their
    edits and the generated anomalies; standardise it on the validation normals. Needs the prior's class maps."""
    out = directory / BRANCH_DIR
    why = "disabled in the config" if not cfg.composition.enabled else \
        "tiled mode" if is_tiled(cfg) else \
        "it reads the composition prior's class maps, and the prior is off" if seg is None else None
    if why is not None:
        return _branch_off(out, "composition branch", why, log), None
    k = seg.model.num_classes
    anomalies = splits.train.labels == 1
    anomaly_maps = anomaly_masks = None
    if cfg.composition.use_generated and anomalies.any():
        log(f"segmenting {int(anomalies.sum())} generated anomalies for the composition branch")
        anomaly_maps = segment_maps(seg.model, splits.train.images[anomalies], batch_size=cfg.prior.batch_size)
        anomaly_masks = splits.train.targets[anomalies]
    net = train_branch(seg.bank, k, cfg.composition, anomaly_maps, anomaly_masks, log)
    labels = splits.val.labels
    raw, maps = branch_scores(net, seg.val, k, cfg.composition, cfg.image_size)
    _check_finite(raw, "composition-branch scores")
    normal, normal_maps = raw[labels == 0].astype(np.float64), maps[labels == 0].astype(np.float64)
    entry = {"score_mean": float(normal.mean()), "score_std": max(float(normal.std()), 1e-6) if len(normal) > 1
             else 1.0, "map_mean": float(normal_maps.mean()), "map_std": max(float(normal_maps.std()), 1e-6)}
    save_branch(out, net, cfg.composition, k, entry)
    return {"enabled": True, **entry}, ((raw - entry["score_mean"]) / entry["score_std"]).astype(np.float32)


def attach_memory(directory: Path, bank_patches: list[Any], val_feats: list[Any], labels: np.ndarray,
                  cfg: DetectorConfig, log: Callable[[str], None], batch: int = 32
                  ) -> tuple[dict[str, Any], np.ndarray | None]:
    """Build the patch memory (``patch_memory.py``) from the bank's features of the training normals, and standardise
    its scores and maps on the validation normals. Returns its calibration entry and validation z-scores."""
    out = directory / MEMORY_DIR
    why = None
    if not cfg.memory.enabled:
        why = "disabled in the config"
    elif is_tiled(cfg):
        why = "tiled mode"
    if why is not None:
        return _branch_off(out, "patch memory", why, log), None
    log("building the patch memory from the training normals")
    n = len(bank_patches[0])
    memory = PatchMemory.fit(([p[i:i + batch] for p in bank_patches] for i in range(0, n, batch)), cfg.memory)
    scores, pix_sum, pix_sq, pix_n = [], 0.0, 0.0, 0
    for i in range(0, len(labels), batch):
        sc, maps = memory.score([f[i:i + batch] for f in val_feats], cfg.image_size)
        scores.append(sc)
        normal = maps[labels[i:i + batch] == 0].astype(np.float64)
        pix_sum, pix_sq, pix_n = pix_sum + normal.sum(), pix_sq + (normal * normal).sum(), pix_n + normal.size
    raw = np.concatenate(scores).astype(np.float64)
    _check_finite(raw, "patch-memory scores")
    normal = raw[labels == 0]
    mean = float(normal.mean())
    sd = float(normal.std()) if len(normal) > 1 else 0.0
    map_mean = pix_sum / max(pix_n, 1)
    map_sd = math.sqrt(max(pix_sq / max(pix_n, 1) - map_mean * map_mean, 0.0))
    entry = {"score_mean": mean, "score_std": sd if sd > 1e-6 else 1.0, "map_mean": float(map_mean),
             "map_std": map_sd if map_sd > 1e-6 else 1.0}
    memory.save(out, entry)
    return {"enabled": True, "patches": int(len(memory.patches)), **entry}, \
        ((raw - entry["score_mean"]) / entry["score_std"]).astype(np.float32)


def attach_global(directory: Path, bank_patches: list[Any], val_feats: list[Any], labels: np.ndarray,
                  cfg: DetectorConfig, log: Callable[[str], None], batch: int = 32
                  ) -> tuple[dict[str, Any], np.ndarray | None]:
    """Fit the global branch (``global_branch.py``) on the bank's features of the training normals; standardise
    each scale, then the branch's score, on the validation normals. Returns its calibration entry and validation
    z-scores."""
    out = directory / GLOBAL_DIR
    why = None
    if not cfg.global_branch.enabled:
        why = "disabled in the config"
    elif is_tiled(cfg):
        why = "tiled mode"
    elif not (labels == 0).any():
        why = "no validation normals"
    if why is not None:
        return _branch_off(out, "global branch", why, log), None
    log("fitting the global branch on the training normals")

    def descriptors(feats: list[Any]) -> list[np.ndarray]:
        chunks = [describe([f[i:i + batch] for f in feats], cfg.global_branch) for i in range(0, len(feats[0]), batch)]
        return [np.concatenate(scale) for scale in zip(*chunks)]

    branch = GlobalBranch.fit(descriptors(bank_patches), cfg.global_branch)
    val = descriptors(val_feats)
    normal = labels == 0
    branch.set_scales([d[normal] for d in val])
    raw = branch.raw_scores(val)
    _check_finite(raw, "global-branch scores")
    sd = float(raw[normal].std()) if normal.sum() > 1 else 0.0
    entry = {"score_mean": float(raw[normal].mean()), "score_std": sd if sd > 1e-6 else 1.0}
    branch.save(out, entry)
    return {"enabled": True, **entry}, ((raw - entry["score_mean"]) / entry["score_std"]).astype(np.float32)


def fuse_branches(cal: dict[str, Any], z: dict[str, np.ndarray], labels: np.ndarray, cfg: DetectorConfig) -> None:
    """Choose the fusion rule (``fusion.py``) from the branches' validation z-scores ``z``; store it, the threshold
    on the fused validation normals, and what each branch and candidate gave on validation (updates ``cal``)."""
    fusion, aurocs = choose_fusion(z, labels, cfg.fusion, cfg.fusion_cap)
    fused = fusion.apply(z)
    normal = labels == 0
    cal["threshold_network"] = cal["threshold"]
    cal["threshold"] = float(np.quantile(fused[normal], cfg.threshold_quantile))
    cal[VAL_SCORES] = [float(v) for v in fused[normal]]
    cal["fusion"] = fusion.to_dict()
    cal["fusion_val_auroc"] = aurocs
    cal["val_branch_scores"] = {b: [float(v) for v in s] for b, s in z.items()}
    cal["val_labels"] = [int(v) for v in labels]
    if (labels == 1).any() and normal.any():
        cal["val_auroc_generated_network"] = cal.get("val_auroc_generated")
        cal["val_auroc_generated"] = float(roc_auc_score(labels, fused))


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
