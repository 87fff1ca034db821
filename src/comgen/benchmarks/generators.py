"""The generator benchmark: one CSDA detector, trained with different anomaly sources, side by side.

Why: it is the project's headline claim that component-aware logical anomalies help a detector more than the
classic local generators. Every row uses the same detector settings and the same data; only the anomaly source
changes. A training-free, home-made PatchCore-like kNN detector is the reference row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comgen.data.imageio import resize_rgb
from comgen.data.readers import open_dataset
from comgen.detect.knn import KnnConfig, KnnDetector
from comgen.evaluate.maps import write_map, write_scores_csv
from comgen.evaluate.run import evaluate_category
from comgen.generate.config import CompositionalConfig
from comgen.pipeline.config import RunConfig
from comgen.pipeline.run import run_category
from comgen.pipeline.suite import format_markdown, mean_of_present, results_rows
from comgen.records import DEFAULT_STRUCTURAL_EDITS


@dataclass(frozen=True)
class Row:
    name: str
    backend: str  # generator back-end, or "knn" for the training-free reference
    compositional: dict[str, Any] | None = None  # overrides of CompositionalConfig


ROWS: tuple[Row, ...] = (
    Row("comgen (full)", "compositional"),
    Row("comgen w/o low-density sampling", "compositional", {"low_density": False}),
    Row("comgen remove/add only", "compositional", {"edit_kinds": ["remove", "add", *DEFAULT_STRUCTURAL_EDITS]}),
    Row("cutpaste", "cutpaste"),
    Row("draem-style", "draem"),
    Row("nsa-style", "nsa"),
    Row("knn (home-made PatchCore-like)", "knn"),
)


def _slug(name: str, limit: int = 80) -> str:
    """A row's folder name. Why the limit: a row named by its options (``--compositional``) can be longer than a
    file name may be; a long name keeps its start and gets a short hash of the whole name."""
    slug = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    if len(slug) <= limit:
        return slug
    return f"{slug[:limit - 9]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def row_config(base: RunConfig, row: Row) -> RunConfig:
    """The run config of one row: the base config with the row's anomaly source (masks stage off: same detector)."""
    gen = base.generate
    if row.compositional:
        gen = gen.replace(compositional=CompositionalConfig.from_dict({**gen.compositional.to_dict(), **row.compositional},
                                                                      "generate.compositional"))
    return base.replace(backend=row.backend, generate=gen, mask=False)


def run_knn(dataset: Any, category: str, out: Path, base: RunConfig) -> dict[str, Any]:
    """Fit the kNN peer on the train split, write maps for the test split, evaluate them."""

    size = base.image_size
    train = np.stack([resize_rgb(s.load_image(), size) for s in dataset.samples(category, "train")])
    det = KnnDetector(KnnConfig(backbone=base.detector.backbone.replace(layers=(2, 3)), image_size=size)).fit(train)
    rows = []
    tests = dataset.samples(category, "test")
    for start in range(0, len(tests), 16):
        chunk = tests[start:start + 16]
        images = [s.load_image() for s in chunk]
        scores, maps = det.predict(images)
        for s, img, sc, m in zip(chunk, images, scores, maps):
            write_map(out / "maps", s, cv2.resize(m, img.shape[1::-1], interpolation=cv2.INTER_LINEAR))
            rows.append({"category": category, "split": "test", "label": s.label, "image_id": s.image_id,
                         "path": str(s.path), "score": float(sc)})
    write_scores_csv(out / "maps" / "scores.csv", rows)
    return evaluate_category(dataset, category, out / "maps", base.evaluate)


def run_generator_benchmark(dataset: str | Path, out: str | Path, base: RunConfig, categories: str = "all",
                            rows: tuple[Row, ...] = ROWS, log: Any = print,
                            seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Run every row on every category, once per seed.

    Returns {row name: {"results": {cat: result} of the first seed, "by_seed": {seed: {cat: result}},
    "seconds": s}}. Why several seeds: one seed's AUROC moves by several points with the generated set and the
    detector's initialisation by as much as the differences
    between rows. The training-free kNN row does not depend on the seed and runs once.
    """
    if not seeds:
        raise ValueError("run_generator_benchmark needs at least one seed")
    ds = open_dataset(dataset)
    cats = ds.select_categories(categories)
    out = Path(out)
    table: dict[str, Any] = {}
    for row in rows:
        start = time.perf_counter()
        by_seed: dict[int, dict[str, Any]] = {}
        for seed in seeds[:1] if row.backend == "knn" else seeds:
            results = {}
            for cat in cats:
                # seed 0 keeps the single-seed layout, so earlier runs resume
                folder = out / _slug(row.name) / cat if seed == 0 else out / f"seed{seed}" / _slug(row.name) / cat
                if row.backend == "knn":
                    results[cat] = run_knn(ds, cat, folder, base.resolved())
                else:
                    run = run_category(dataset, cat, folder, row_config(base.replace(seed=seed), row), log=log)
                    results[cat] = evaluate_category(ds, cat, run.maps, base.evaluate)
            by_seed[seed] = results
        table[row.name] = {"results": by_seed[seeds[0]], "by_seed": by_seed, "seconds": time.perf_counter() - start}
        log(f"[bench] {row.name}: {time.perf_counter() - start:.0f} s")
    return table


COLUMNS = [("row", "anomaly source"), ("category", "category"), ("logical_auroc", "logical AUROC"),
           ("structural_auroc", "structural AUROC"), ("mean_auroc", "mean AUROC"),
           ("logical_spro", "logical sPRO@0.05"), ("structural_spro", "structural sPRO@0.05"),
           ("logical_auroc_network", "logical AUROC, network alone"),
           ("structural_auroc_network", "structural AUROC, network alone"), ("seconds", "wall time (s)")]


SPREAD_KEYS = ("logical_auroc", "structural_auroc", "logical_auroc_network", "structural_auroc_network")


def _mean_rows(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per category, the mean over seeds of every metric (rows come in the same category order per seed)."""
    return [{"category": rows[0]["category"], **{k: mean_of_present(rows, k) for k, _ in COLUMNS[2:-1]}}
            for rows in zip(*per_seed)]


def benchmark_markdown(table: dict[str, Any]) -> str:
    """Per-row mean table first (the headline), then every category; values are means over the seeds.

    With several seeds the headline's AUROC cells read "mean ± sd", the sd being that of the category mean
    across seeds: a difference between rows smaller than it is not a result.
    """
    summary, detail = [], []
    for name, entry in table.items():
        per_seed = [results_rows(res) for res in entry["by_seed"].values()]
        rows = _mean_rows(per_seed)
        for r in rows:
            detail.append({"row": name, **r})
        mean: dict[str, Any] = {k: mean_of_present(rows, k) for k, _ in COLUMNS[2:-1]}
        if len(per_seed) > 1:
            for k in SPREAD_KEYS:
                seed_means = [m for m in (mean_of_present(rs, k) for rs in per_seed) if m is not None]
                if mean[k] is not None and seed_means:
                    mean[k] = f"{mean[k]:.3f} ± {float(np.std(seed_means)):.3f}"
        summary.append({"row": name, "category": "mean", **mean, "seconds": round(entry["seconds"])})
    text = format_markdown(summary, COLUMNS) + "\n\n" + format_markdown(detail, COLUMNS[:-1])
    defects = per_defect_rows(table)
    return text + "\n\n" + format_markdown(defects, DEFECT_COLUMNS) if defects else text


DEFECT_COLUMNS = [("row", "anomaly source"), ("category", "category"), ("defect", "defect type"),
                  ("image_auroc", "image AUROC"), ("image_auroc_network", "network alone"),
                  ("image_auroc_prior", "prior alone")]


def per_defect_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Per row, category and defect type (LOCO layout only): image AUROC, fused and per branch, mean over seeds.

    Why: the category means hide which defects an anomaly source teaches the network (an extra pin) and which it
    never makes (a missing cable).
    """
    out = []
    for name, entry in table.items():
        by_seed = list(entry["by_seed"].values())
        for cat, first in by_seed[0].items():
            for defect in first.get("per_defect", {}):
                per = [res[cat]["per_defect"][defect] for res in by_seed if defect in res[cat].get("per_defect", {})]
                out.append({"row": name, "category": cat, "defect": defect,
                            **{k: mean_of_present(per, k) for k, _ in DEFECT_COLUMNS[3:]}})
    return out
