"""The generator benchmark (issue 7): one CSDA detector, trained with different anomaly sources, side by side.

Why: it is the project's headline claim that component-aware logical anomalies help a detector more than the
classic local generators. Every row uses the same detector settings and the same data; only the anomaly source
changes. A training-free PatchCore-like kNN detector is the peer row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from comgen.pipeline.config import RunConfig
from comgen.pipeline.suite import format_markdown, results_rows
from comgen.records import STRUCTURAL_EDITS


@dataclass(frozen=True)
class Row:
    name: str
    backend: str  # generator back-end, or "knn" for the training-free peer
    compositional: dict[str, Any] | None = None  # overrides of CompositionalConfig


ROWS: tuple[Row, ...] = (
    Row("comgen (full)", "compositional"),
    Row("comgen w/o low-density sampling", "compositional", {"low_density": False}),
    Row("comgen remove/add only", "compositional", {"edit_kinds": ["remove", "add", *STRUCTURAL_EDITS]}),
    Row("cutpaste", "cutpaste"),
    Row("draem-style", "draem"),
    Row("nsa-style", "nsa"),
    Row("knn (PatchCore-like, peer)", "knn"),
)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def row_config(base: RunConfig, row: Row) -> RunConfig:
    """The run config of one row: the base config with the row's anomaly source (masks stage off: same detector)."""
    gen = base.generate
    if row.compositional:
        gen = gen.replace(compositional={**gen.compositional, **row.compositional})
    return base.replace(backend=row.backend, generate=gen, mask=False)


def run_knn(dataset: Any, category: str, out: Path, base: RunConfig) -> dict[str, Any]:
    """Fit the kNN peer on the train split, write maps for the test split, evaluate them."""
    import cv2

    from comgen.data.imageio import resize_rgb
    from comgen.detect.knn import KnnConfig, KnnDetector
    from comgen.evaluate.maps import write_map, write_scores_csv
    from comgen.evaluate.run import evaluate_category

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
                            rows: tuple[Row, ...] = ROWS, log: Any = print) -> dict[str, Any]:
    """Run every row on every category; returns {row name: {"results": {cat: result}, "seconds": s}}."""
    from comgen.data.readers import open_dataset
    from comgen.evaluate.run import evaluate_category
    from comgen.pipeline.run import run_category

    ds = open_dataset(dataset)
    cats = ds.select_categories(categories)
    out = Path(out)
    table: dict[str, Any] = {}
    for row in rows:
        start = time.perf_counter()
        results = {}
        for cat in cats:
            folder = out / _slug(row.name) / cat
            if row.backend == "knn":
                results[cat] = run_knn(ds, cat, folder, base.resolved())
            else:
                run = run_category(dataset, cat, folder, row_config(base, row), log=log)
                results[cat] = evaluate_category(ds, cat, run.maps, base.evaluate)
        table[row.name] = {"results": results, "seconds": time.perf_counter() - start}
        log(f"[bench] {row.name}: {time.perf_counter() - start:.0f} s")
    return table


COLUMNS = [("row", "anomaly source"), ("category", "category"), ("logical_auroc", "logical AUROC"),
           ("structural_auroc", "structural AUROC"), ("mean_auroc", "mean AUROC"),
           ("logical_spro", "logical sPRO@0.05"), ("structural_spro", "structural sPRO@0.05"),
           ("logical_auroc_network", "logical AUROC, network alone"),
           ("structural_auroc_network", "structural AUROC, network alone"), ("seconds", "wall time (s)")]


def benchmark_markdown(table: dict[str, Any]) -> str:
    """Per-row mean table first (the headline), then every category."""
    summary, detail = [], []
    for name, entry in table.items():
        rows = results_rows(entry["results"])
        for r in rows:
            detail.append({"row": name, **r})
        mean = {k: float(np.mean([r[k] for r in rows if r.get(k) is not None]))
                for k, _ in COLUMNS[2:-1] if any(r.get(k) is not None for r in rows)}
        summary.append({"row": name, "category": "mean", **mean, "seconds": round(entry["seconds"])})
    return format_markdown(summary, COLUMNS) + "\n\n" + format_markdown(detail, COLUMNS[:-1])
