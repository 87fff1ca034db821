"""Evaluate anomaly maps of one dataset category: the numbers behind ``comgen evaluate``.

Why the grouping is fixed here: MVTec LOCO's convention is logical AUROC = good vs logical, structural =
good vs structural, mean = their average (never one AUROC over all anomalies pooled); MVTec AD / folder
datasets report each defect type against the good images plus all test images together ("all").
Image scores come from the scores CSV when there is one, else from the map maximum (as LOCO's script does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from comgen.config import ConfigBase
from comgen.errors import ConfigError, DatasetError, InputError
from comgen.evaluate.groundtruth import GroundTruth, ground_truth_from_masks
from comgen.evaluate.maps import BRANCH_COLUMNS, find_map, map_path, read_map, read_scores_csv, scores_by_key
from comgen.evaluate.metrics import (
    AUPRO_LIMIT,
    DEFAULT_CHUNK_PIXELS,
    SPRO_HEADLINE,
    SPRO_LIMITS,
    PixelCurveBuilder,
    PixelCurves,
    decision_metrics,
    image_auroc,
    image_roc,
)
from comgen.progress import progress
from comgen.records import DefectSpec, Sample

LOCO_GROUPS = ("logical", "structural")

#: per-branch image AUROCs (network alone, composition prior alone) added when the scores CSV has them
BRANCH_AUROCS = tuple(f"image_auroc_{c.removesuffix('_score')}" for c in BRANCH_COLUMNS)


@dataclass
class EvalConfig(ConfigBase):
    """How ``comgen evaluate`` scores maps (saved as ``config.yaml`` beside ``metrics.json``)."""

    image_score: str = "auto"  # auto (scores CSV if present, else map max) | csv | max
    aupro_limit: float = AUPRO_LIMIT
    spro_limits: tuple[float, ...] = SPRO_LIMITS
    spro_headline: float = SPRO_HEADLINE
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS
    gallery: int = 4  # images per gallery row in the report
    curve_points: int = 400  # points kept per curve for plots

    def __post_init__(self) -> None:
        if self.image_score not in ("auto", "csv", "max"):
            raise ConfigError("image_score", f"{self.image_score!r} is not one of auto, csv, max")
        if not 0 < self.aupro_limit <= 1 or any(not 0 < v <= 1 for v in self.spro_limits):
            raise ConfigError("limits", "integration limits must lie in (0, 1]")
        if self.spro_headline not in self.spro_limits:
            raise ConfigError("spro_headline", f"{self.spro_headline} is not one of spro_limits {self.spro_limits}")


@dataclass
class _Plan:
    """Which group each test image belongs to and which groups make each reported subset."""

    loco: bool
    groups: list[str]
    subsets: dict[str, set[str]] = field(default_factory=dict)


def _plan(samples: Sequence[Sample]) -> _Plan:
    loco = any(s.kind in LOCO_GROUPS for s in samples)
    if loco:
        groups = [s.kind if s.kind in LOCO_GROUPS else "good" for s in samples]
        subsets = {g: {"good", g} for g in LOCO_GROUPS if g in groups}
    else:
        groups = ["good" if not s.is_anomalous else s.label for s in samples]
        labels = sorted({g for g in groups if g != "good"})
        subsets = {g: {"good", g} for g in labels}
        subsets["all"] = set(groups)
    return _Plan(loco=loco, groups=groups, subsets=subsets)


def _image_scores(samples: Sequence[Sample], maps_root: Path, cfg: EvalConfig,
                  scores_csv: Path | None) -> tuple[dict[int, float] | None, str, dict[str, np.ndarray],
                                                    np.ndarray | None]:
    """Scores from the CSV (or None when the map maximum is to be used), a description of the source, the
    detector's per-branch scores where the CSV has them for every image (``network``, ``prior``), and its pass/fail
    decisions where it has them for every image."""
    csv_path = scores_csv if scores_csv is not None else maps_root / "scores.csv"
    if cfg.image_score == "max" or (cfg.image_score == "auto" and scores_csv is None and not csv_path.is_file()):
        return None, "map_max", {}, None
    rows = scores_by_key(read_scores_csv(csv_path))
    out = {}
    matched = []
    for i, s in enumerate(samples):
        row = rows.get((s.category, s.split, s.label, s.image_id))
        if row is None:
            raise InputError(csv_path, f"no score for test image {s.category}/{s.split}/{s.label}/{s.image_id}")
        out[i] = float(row["score"])
        matched.append(row)
    branches = {}
    for col in BRANCH_COLUMNS:
        vals = [r.get(col) for r in matched]
        if vals and all(v is not None for v in vals):
            branches[col.removesuffix("_score")] = np.array(vals, np.float64)
    decisions = [r.get("decision") for r in matched]
    shipped = np.array(decisions, bool) if decisions and all(d is not None for d in decisions) else None
    return out, f"csv:{csv_path}", branches, shipped


def _summarise(curves: PixelCurves, scores: np.ndarray, labels: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    spro = curves.auc_spro(cfg.spro_limits) if curves.spro is not None else None
    return {
        "n_good": int((~labels).sum()),
        "n_anomalous": int(labels.sum()),
        "n_regions": curves.n_regions,
        "n_channels": curves.n_channels,
        "image_auroc": image_auroc(scores, labels),
        "pixel_auroc": curves.pixel_auroc(),
        "aupro": curves.aupro(cfg.aupro_limit),
        "auc_spro": spro,
        "spro": None if spro is None else spro[f"{cfg.spro_headline:g}"],
    }


def _mean(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """LOCO's mean of the logical and structural results (None where either is undefined)."""
    out: dict[str, Any] = {}
    for key in ("image_auroc", "pixel_auroc", "aupro", "spro", *BRANCH_AUROCS):
        if key in BRANCH_AUROCS and key not in a and key not in b:
            continue
        out[key] = None if a.get(key) is None or b.get(key) is None else 0.5 * (a[key] + b[key])
    if a.get("auc_spro") and b.get("auc_spro"):
        out["auc_spro"] = {k: (None if a["auc_spro"][k] is None or b["auc_spro"][k] is None
                               else 0.5 * (a["auc_spro"][k] + b["auc_spro"][k])) for k in a["auc_spro"]}
    else:
        out["auc_spro"] = None
    return out


def _per_defect(builder: PixelCurveBuilder, plan: _Plan, scores: np.ndarray, cfg: EvalConfig,
                branches: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """LOCO's per-defect-type results: good images + images holding the defect; sPRO of its channels only.

    With a fused score, also what each branch alone scores per defect type (``image_auroc_network``): which
    defects the anomaly source taught the network, and which only the composition prior finds.
    """
    groups = np.array(plan.groups)
    has = [set(k[1]) for k in builder.image_keys]
    out = {}
    for name in builder.defect_names:
        sel = np.array([g == "good" or name in d for g, d in zip(plan.groups, has)])
        c = builder.curves(set(plan.groups), defect=name)
        spro = c.auc_spro(cfg.spro_limits)
        labels = groups[sel] != "good"
        out[name] = {"n_anomalous": int(labels.sum()), "n_channels": c.n_channels,
                     "image_auroc": image_auroc(scores[sel], labels),
                     "auc_spro": spro, "spro": spro[f"{cfg.spro_headline:g}"]}
        for branch, values in branches.items():
            out[name][f"image_auroc_{branch}"] = image_auroc(values[sel], labels)
    return out


def evaluate_category(dataset: Any, category: str, maps_root: str | Path, cfg: EvalConfig | None = None,
                      scores_csv: str | Path | None = None) -> dict[str, Any]:
    """All metrics of one category from maps on disk. Returns a JSON-ready dict (plus light curves)."""
    cfg = cfg or EvalConfig()
    maps_root = Path(maps_root)
    samples = list(dataset.samples(category, "test"))
    if not samples:
        raise DatasetError(Path(dataset.root) / category, "no test images")
    missing = [map_path(maps_root, s) for s in samples if find_map(maps_root, s) is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(missing[0], f"missing anomaly map for a test image{more}")
    plan = _plan(samples)
    specs = dataset.defects(category) if plan.loco else {}
    by_value: dict[int, DefectSpec] | None = {d.pixel_value: d for d in specs.values()} if specs else None
    csv_scores, score_source, branches, decisions = _image_scores(
        samples, maps_root, cfg, Path(scores_csv) if scores_csv is not None else None)
    map_max = np.zeros(len(samples), np.float64)

    def load_map(i: int) -> np.ndarray:
        amap = read_map(maps_root, samples[i])
        map_max[i] = float(amap.max())
        return amap

    def load_gt(i: int) -> GroundTruth | None:
        s = samples[i]
        if not s.is_anomalous or not s.mask_paths:
            return None
        return ground_truth_from_masks(s.load_masks(), by_value, sources=s.mask_paths)

    builder = PixelCurveBuilder(chunk_pixels=cfg.chunk_pixels, with_spro=by_value is not None)
    n = len(samples)
    for i in progress(range(n), desc=f"evaluate {category}: defect pixels", total=n):
        builder.add_defects(load_map(i), load_gt(i), plan.groups[i])
    builder.freeze()
    for i in progress(range(n), desc=f"evaluate {category}: background pixels", total=n):
        builder.add_background(load_map(i), load_gt(i), plan.groups[i])
    scores = map_max if csv_scores is None else np.array([csv_scores[i] for i in range(n)])
    groups = np.array(plan.groups)
    metrics: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    for name, members in plan.subsets.items():
        sel = np.isin(groups, list(members))
        labels = groups[sel] != "good"
        c = builder.curves(members)
        metrics[name] = _summarise(c, scores[sel], labels, cfg)
        for branch, values in branches.items():  # what each detector branch alone would have scored
            metrics[name][f"image_auroc_{branch}"] = image_auroc(values[sel], labels)
        if decisions is not None:  # how the detector's shipped threshold does on this subset
            metrics[name].update(decision_metrics(decisions[sel], labels, scores[sel]))
        roc = image_roc(scores[sel], labels)
        plots[name] = {key: (None if cur is None else cur.for_plot(cfg.curve_points))
                       for key, cur in (("image_roc", roc), ("pixel_roc", c.roc), ("pro", c.pro), ("spro", c.spro))}
    per_defect = _per_defect(builder, plan, scores, cfg, branches) if plan.loco and by_value is not None else {}
    summary = "all"
    if plan.loco and all(g in metrics for g in LOCO_GROUPS):
        metrics["mean"] = _mean(metrics["logical"], metrics["structural"])
        summary = "mean"
    elif plan.loco:
        summary = next(iter(metrics), "mean")
    images = [{"image_id": s.image_id, "label": s.label, "kind": s.kind, "group": g, "image": str(s.path),
               "map": str(find_map(maps_root, s)), "masks": [str(p) for p in s.mask_paths],
               "score": float(scores[i]), "map_max": float(map_max[i]),
               **{f"{b}_score": float(v[i]) for b, v in branches.items()}}
              for i, (s, g) in enumerate(zip(samples, plan.groups))]
    return {
        "category": category,
        "layout": getattr(dataset, "layout", "unknown"),
        "protocol": "loco" if plan.loco else "per_defect_type",
        "maps": str(maps_root),
        "image_score": score_source,
        "summary": summary,
        "n_images": {g: int((groups == g).sum()) for g in sorted(set(plan.groups))},
        "defects": {d.name: {"pixel_value": d.pixel_value, "saturation_threshold": d.saturation_threshold,
                             "relative_saturation": d.relative_saturation} for d in specs.values()},
        "metrics": metrics,
        "per_defect": per_defect,
        "images": images,
        "curves": plots,
    }


def evaluate_dataset(dataset: Any, categories: Sequence[str] | str, maps_root: str | Path,
                     cfg: EvalConfig | None = None, scores_csv: str | Path | None = None) -> dict[str, Any]:
    """Evaluate several categories (``"all"`` = every category of the dataset)."""
    categories = dataset.select_categories(categories)
    results = {c: evaluate_category(dataset, c, maps_root, cfg, scores_csv) for c in categories}
    return {"dataset": str(getattr(dataset, "root", "")), "categories": results}


def metrics_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``metrics.json``: everything but the plot curves."""
    return {"dataset": results.get("dataset"),
            "categories": {c: {k: v for k, v in r.items() if k != "curves"}
                           for c, r in results["categories"].items()}}
