"""Several categories end to end, one combined report, and the results table printed at the end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from comgen.data.readers import open_dataset
from comgen.evaluate.report import write_report
from comgen.evaluate.run import evaluate_category
from comgen.generate.registry import check_backend
from comgen.pipeline.config import RunConfig
from comgen.pipeline.run import check_out_of_dataset, open_for_run, run_category
from comgen.rundir import RunDir


def selected_config(config: Path | None = None, **overrides: Any) -> RunConfig:
    """The run config from ``--config`` (or defaults), with the command-line overrides applied."""
    cfg = RunConfig.load(config) if config else RunConfig()
    if overrides.get("image_size") is not None:
        cfg = cfg.replace(image_size=int(overrides["image_size"]))
    if overrides.get("n") is not None:
        cfg = cfg.replace(n_anomalies=int(overrides["n"]))
    if overrides.get("backend") is not None:
        check_backend(overrides["backend"])
        cfg = cfg.replace(backend=overrides["backend"])
    if overrides.get("epochs") is not None:
        cfg = cfg.replace(detector=cfg.detector.replace(epochs=int(overrides["epochs"])))
    return RunConfig.from_dict(cfg.to_dict())  # re-validate the combination


def run_suite(dataset: str | Path, category: str, out: str | Path | None, cfg: RunConfig,
              force: bool = False, log: Any = print, nested: bool = False) -> dict[str, Any]:
    """Run each selected category into its own run directory and write one combined report.

    One category: ``out`` is the run directory (default ``runs/<category>``), the report is ``out/eval``; with
    ``nested`` it runs in ``out/<category>`` all the same (the demo's layout, whatever it was asked for).
    Several: each category runs in ``out/<category>`` (default ``runs/``), the combined report is ``out/report``.
    """
    check_backend(cfg.backend)  # an anomaly source whose extra is missing fails before any stage runs
    ds = open_dataset(dataset)
    cats = ds.select_categories(category)
    single = len(cats) == 1 and category != "all"
    parent = Path(out) if out is not None else Path("runs")
    alone = single and not nested and out is not None
    roots = {cat: Path(out) if alone else parent / cat for cat in cats}
    for cat in cats:  # every category's set-up problem shows before the first one runs for an hour
        open_for_run(dataset, cat)
        check_out_of_dataset(roots[cat], ds.root)
    runs: dict[str, RunDir] = {}
    for cat in cats:
        runs[cat] = run_category(dataset, cat, roots[cat], cfg, force=force, log=log)
    tested = [c for c in cats if ds.samples(c, "test")]  # a folder of normal images alone has nothing to score
    if not tested:
        return {"results": {}, "report": None, "runs": {c: str(r.root) for c, r in runs.items()}}
    if single:
        run = runs[cats[0]]
        report = run.eval / "report.html"
        # the evaluate stage already wrote this category's metrics: read them, do not evaluate twice
        results = json.loads((run.eval / "metrics.json").read_text())["categories"]
    else:
        results = {c: evaluate_category(ds, c, runs[c].maps, cfg.evaluate) for c in tested}
        extras = {c: _previews(r, cfg) for c, r in runs.items()}
        report = write_report({"dataset": str(ds.root), "categories": results}, parent / "report",
                              gallery=cfg.evaluate.gallery, title="comgen: all categories", extra_images=extras)
        cfg.save(parent / "report" / "config.yaml")
    return {"results": results, "report": str(report), "runs": {c: str(r.root) for c, r in runs.items()}}


def _previews(run: RunDir, cfg: RunConfig) -> list[tuple[str, Path]]:
    return [("component segmentation (tokens <c1>..<cK>)", run.components / "preview.png"),
            (f"generated anomalies ({cfg.backend})", run.generated(cfg.backend) / "preview.png")]


def is_per_defect(result: dict[str, Any]) -> bool:
    """Whether a category was scored per defect folder (MVTec AD, folder datasets) rather than by LOCO's groups."""
    return result.get("protocol") == "per_defect_type" or "all" in result.get("metrics", {})


def results_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per LOCO-style category: logical / structural / mean image AUROC and sPRO@0.05."""
    rows = []
    for cat, r in results.items():
        if is_per_defect(r):
            continue
        m = r["metrics"]
        row: dict[str, Any] = {"category": cat}
        for subset in ("logical", "structural", "mean", "all"):
            if subset in m:
                row[f"{subset}_auroc"] = m[subset].get("image_auroc")
                row[f"{subset}_spro"] = m[subset].get("spro")
                row[f"{subset}_auroc_network"] = m[subset].get("image_auroc_network")
        rows.append(row)
    return rows


def defect_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the categories scored per defect folder: all test images first, then each defect folder against
    the good images. Pixel AUROC and AUPRO stay empty where the defects have no masks."""
    rows = []
    for cat, r in results.items():
        if not is_per_defect(r):
            continue
        m = r["metrics"]
        for subset in ["all", *sorted(k for k in m if k != "all")]:
            if subset in m:
                rows.append({"category": cat, "defects": subset, "images": m[subset].get("n_anomalous"),
                             **{k: m[subset].get(k) for k in ("image_auroc", "pixel_auroc", "aupro")}})
    return rows


DEFECT_COLUMNS = [("category", "category"), ("defects", "defects"), ("images", "anomalous images"),
                  ("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO@0.3")]


def format_markdown(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table; missing values print as '-'."""
    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


RESULT_COLUMNS = [("category", "category"), ("logical_auroc", "logical AUROC"),
                  ("structural_auroc", "structural AUROC"), ("mean_auroc", "mean AUROC"),
                  ("logical_spro", "logical sPRO@0.05"), ("structural_spro", "structural sPRO@0.05"),
                  ("mean_spro", "mean sPRO@0.05")]


def mean_of_present(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the rows that have it (None when none do): a category without logical anomalies
    (MVTec AD) must not drag a mean to zero."""
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def print_table(summary: dict[str, Any]) -> None:
    """The closing table(s): LOCO's logical / structural groups, and per defect folder for other datasets."""
    rows = results_rows(summary["results"])
    per_defect = defect_rows(summary["results"])
    if not rows and not per_defect:
        print("no labelled test images: the detector is trained, nothing was evaluated "
              f"(run folders: {', '.join(summary['runs'].values())})")
        return
    if rows:
        rows.append({"category": "**mean**", **{k: mean_of_present(rows, k) for k, _ in RESULT_COLUMNS[1:]}})
        print(format_markdown(rows, RESULT_COLUMNS))
    if per_defect:
        if rows:
            print()
        print(format_markdown(per_defect, DEFECT_COLUMNS))
    print(f"report: {summary['report']}")
