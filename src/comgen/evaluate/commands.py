"""``comgen evaluate``: score anomaly maps (MVTec exchange layout) against a dataset's ground truth.

Any detector's maps can be evaluated: ``<maps>/<category>/test/<label>/<id>.tiff`` float32 at each image's
original size, and optionally ``<maps>/scores.csv`` with image scores (else the map maximum is used).
``--anomalib-maps DIR`` reads anomalib's predictions instead (``comgen.evaluate.anomalib_maps``): they are
converted into ``<out>/maps`` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer


def run_evaluate(dataset: Path, category: str, maps: Optional[Path], out: Path, layout: str = "auto",
                 scores: Optional[Path] = None, overrides: Optional[dict[str, Any]] = None,
                 log: Callable[[str], None] = typer.echo, anomalib_maps: Optional[Path] = None) -> dict[str, Any]:
    """The command's body (also callable by the pipeline): metrics.json, config.yaml, report.html in ``out``.

    Exactly one of ``maps`` (comgen's layout) and ``anomalib_maps`` (anomalib's predictions, converted into
    ``out/maps`` first) is given.
    """
    from comgen.data.readers import open_dataset
    from comgen.errors import ConfigError, InputError
    from comgen.evaluate.report import write_report
    from comgen.evaluate.run import EvalConfig, evaluate_dataset

    cfg = EvalConfig.from_dict({k: v for k, v in (overrides or {}).items() if v is not None},
                               where="evaluate options")
    if (maps is None) == (anomalib_maps is None):
        raise ConfigError("--maps", "give either --maps or --anomalib-maps (one of them)")
    out = Path(out)
    ds = open_dataset(dataset, layout=layout)
    if anomalib_maps is not None:
        from comgen.evaluate.anomalib_maps import convert_anomalib_maps

        maps = out / "maps"
        samples = [s for c in ds.select_categories(category) for s in ds.samples(c, "test")]
        convert_anomalib_maps(ds.root, samples, anomalib_maps, maps)
        log(f"converted {len(samples)} anomalib maps from {anomalib_maps} into {maps}")
    assert maps is not None
    if not Path(maps).is_dir():
        raise InputError(maps, "maps directory not found")
    results = evaluate_dataset(ds, category, maps, cfg, scores)
    cfg.save(out / "config.yaml")
    report = write_report(results, out, gallery=cfg.gallery)
    log(_summary_table(results))
    log(f"wrote {out / 'metrics.json'} and {report}")
    return results


def _summary_table(results: dict[str, Any]) -> str:
    lines = [f"{'category':<24} {'subset':<12} {'img AUROC':>9} {'px AUROC':>9} {'AUPRO':>7} {'sPRO@.05':>8}"]
    for cat, r in results["categories"].items():
        for subset, m in r["metrics"].items():
            vals = [m.get("image_auroc"), m.get("pixel_auroc"), m.get("aupro"), m.get("spro")]
            txt = ["n/a" if v is None else f"{v:.3f}" for v in vals]
            lines.append(f"{cat:<24} {subset:<12} {txt[0]:>9} {txt[1]:>9} {txt[2]:>7} {txt[3]:>8}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add ``comgen evaluate`` to the app."""

    @app.command("evaluate")
    def evaluate(
        dataset: Path = typer.Argument(..., help="Dataset root (MVTec LOCO, MVTec AD or folder layout)."),
        category: str = typer.Option("all", "--category", "-c", help="Category, comma list, or 'all'."),
        maps: Optional[Path] = typer.Option(None, "--maps", "-m",
                                            help="Maps root: <maps>/<category>/test/<label>/<id>.tiff."),
        anomalib_maps: Optional[Path] = typer.Option(
            None, "--anomalib-maps", help="anomalib's maps instead of --maps: DIR/<image path relative to the "
                                          "dataset>.npy|.tiff [+ DIR/scores.csv: image,score]."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder for metrics.json and report.html."),
        layout: str = typer.Option("auto", "--layout", help="auto | loco | mvtec_ad | folder."),
        scores: Optional[Path] = typer.Option(None, "--scores",
                                              help="Scores CSV (default <maps>/scores.csv if present)."),
        image_score: Optional[str] = typer.Option(None, "--image-score", help="auto | csv | max (map maximum)."),
        gallery: Optional[int] = typer.Option(None, "--gallery", help="Images per gallery row (default 4)."),
    ) -> None:
        """Compute image/pixel AUROC, AUPRO and AUC-sPRO; write metrics.json and report.html."""
        run_evaluate(dataset, category, maps, out, layout, scores,
                     {"image_score": image_score, "gallery": gallery}, anomalib_maps=anomalib_maps)
