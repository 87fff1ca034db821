"""Self-contained HTML report: per-category table, ROC / PRO / sPRO curves, and a failure gallery.

Why a gallery of the highest-scored good images and the lowest-scored anomalies: those are exactly the
images that decide the AUROC, so a person sees at a glance where (and why) the detector fails. Images
are written beside ``report.html`` (``figures/``, ``gallery/``) and referenced relatively.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tifffile

from comgen.evaluate.run import BRANCH_AUROCS, metrics_json
from comgen.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, write_png
from comgen.progress import progress

_SUBSET_COLOURS = {"logical": "tab:blue", "structural": "tab:orange", "mean": "tab:green", "all": "black"}


def _as_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``evaluate_dataset`` output or a single ``evaluate_category`` result."""
    if "categories" in results:
        return dict(results)
    return {"dataset": "", "categories": {results["category"]: results}}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "x"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


# ------------------------------------------------------------------------------------------------ figures
def _plot_curves(result: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = [("image_roc", "Image ROC", "FPR (images)", "TPR", 1.0),
              ("pixel_roc", "Pixel ROC", "FPR (pixels)", "TPR", 1.0),
              ("pro", "PRO (AUPRO to FPR 0.3)", "FPR (pixels)", "PRO", 0.3),
              ("spro", "sPRO (headline FPR 0.05)", "FPR (pixels)", "sPRO", 0.3)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.6))
    for ax, (key, title, xl, yl, xmax) in zip(axes, panels):
        drawn = False
        for subset, curves in result.get("curves", {}).items():
            cur = curves.get(key)
            if not cur:
                continue
            ax.plot(cur["x"], cur["y"], label=subset, color=_SUBSET_COLOURS.get(subset), lw=1.5)
            drawn = True
        if key == "spro":
            ax.axvline(0.05, color="grey", ls=":", lw=1)
        ax.set(title=title, xlabel=xl, ylabel=yl, xlim=(0, xmax), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, "not defined", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def _read_rgb(path: str) -> np.ndarray:
    try:
        from comgen.data.imageio import read_rgb
    except ImportError:  # readers not installed: plain OpenCV is enough for a thumbnail
        import cv2

        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"{path}: cannot read image") from None
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return read_rgb(path)


def _overlay(entry: Mapping[str, Any], lo: float, hi: float, max_side: int = 256) -> np.ndarray:
    """Image with the anomaly map as a heat map (shared scale lo..hi) and ground-truth contours in green."""
    img = _read_rgb(entry["image"])
    amap = np.asarray(tifffile.imread(entry["map"]), dtype=np.float32).reshape(img.shape[:2])
    norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
    heat = cv2.cvtColor(cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(img, 0.55, heat, 0.45, 0)
    scale = max_side / max(img.shape[:2])  # small images are enlarged (nearest) so contours stay crisp
    if scale != 1.0:
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_NEAREST
        out = cv2.resize(out, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=interp)
    for mpath in entry.get("masks", []):
        mask = cv2.imread(mpath, cv2.IMREAD_UNCHANGED)
        if mask is None:
            continue
        if mask.ndim == 3:
            mask = mask.max(axis=2)
        mask = cv2.resize((mask > 0).astype(np.uint8), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 0), 2)
    return out


def _gallery(result: Mapping[str, Any], out_dir: Path, n: int) -> list[tuple[str, list[dict[str, Any]]]]:
    """Write overlays of the top-n good and bottom-n anomalous images; return (title, entries) rows."""
    images = result.get("images", [])
    good = sorted((e for e in images if e["kind"] == "good"), key=lambda e: -e["score"])[:n]
    bad = sorted((e for e in images if e["kind"] != "good"), key=lambda e: e["score"])[:n]
    chosen = good + bad
    if not chosen:
        return []

    vals = [tifffile.imread(e["map"]) for e in chosen]
    lo = float(min(v.min() for v in vals))
    hi = float(max(v.max() for v in vals))
    rows = []
    slug = _slug(result["category"])
    for title, entries, tag in (("Highest-scored good images (false alarms)", good, "good"),
                                ("Lowest-scored anomalies (misses)", bad, "anomalous")):
        row = []
        for k, e in enumerate(entries):
            rel = Path("gallery") / f"{slug}_{tag}_{k}.png"
            write_png(out_dir / rel, _overlay(e, lo, hi))
            row.append({**e, "thumb": rel.as_posix()})
        rows.append((title, row))
    return rows


# ------------------------------------------------------------------------------------------------ HTML
_CSS = """body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 16px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}img{max-width:100%}
.gal img{height:160px;width:auto}h2{border-bottom:1px solid #ddd}"""


def _table(results: Mapping[str, Any]) -> str:
    limits: list[str] = []
    for r in results["categories"].values():
        for m in r["metrics"].values():
            if m.get("auc_spro"):
                limits = list(m["auc_spro"])
                break
    head = ("<tr><th class=l>category</th><th class=l>subset</th><th>image AUROC</th><th>pixel AUROC</th>"
            "<th>AUPRO@0.3</th>" + "".join(f"<th>AUC-sPRO@{html.escape(k)}</th>" for k in limits) + "</tr>")
    rows = []
    for cat, r in results["categories"].items():
        for subset, m in r["metrics"].items():
            bold = subset == r.get("summary")
            spro = m.get("auc_spro") or {}
            cells = [m.get("image_auroc"), m.get("pixel_auroc"), m.get("aupro")] + [spro.get(k) for k in limits]
            tds = "".join(f"<td>{'<b>' if bold else ''}{_fmt(v)}{'</b>' if bold else ''}</td>" for v in cells)
            rows.append(f"<tr><td class=l>{html.escape(cat)}</td><td class=l>{html.escape(subset)}</td>{tds}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _defect_table(per_defect: Mapping[str, Any]) -> str:
    """LOCO's per-defect-type results (good images + images holding the defect)."""
    limits = next((list(m["auc_spro"]) for m in per_defect.values() if m.get("auc_spro")), [])
    branches = [k for k in BRANCH_AUROCS if any(k in m for m in per_defect.values())]
    head = ("<tr><th class=l>defect type</th><th>images</th><th>image AUROC</th>"
            + "".join(f"<th>image AUROC, {html.escape(k.removeprefix('image_auroc_'))} alone</th>" for k in branches)
            + "".join(f"<th>AUC-sPRO@{html.escape(k)}</th>" for k in limits) + "</tr>")
    rows = "".join(
        f"<tr><td class=l>{html.escape(name)}</td><td>{m['n_anomalous']}</td><td>{_fmt(m.get('image_auroc'))}</td>"
        + "".join(f"<td>{_fmt(m.get(k))}</td>" for k in branches)
        + "".join(f"<td>{_fmt((m.get('auc_spro') or {}).get(k))}</td>" for k in limits) + "</tr>"
        for name, m in per_defect.items())
    return f"<h3>Per defect type</h3><table>{head}{rows}</table>"


def write_report(results: Mapping[str, Any], out_dir: str | Path, gallery: int = 4,
                 title: str = "comgen evaluation", write_metrics: bool = True,
                 extra_images: Mapping[str, Sequence[tuple[str, Path]]] | None = None) -> Path:
    """Write ``report.html`` (+ ``figures/``, ``gallery/``; and ``metrics.json`` unless told not to).

    ``extra_images`` maps a category to (caption, image path) pairs shown in its section, e.g. the component
    segmentation and the generation preview of ``comgen run``; they are copied beside the report.
    """
    results = _as_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if write_metrics:
        atomic_write_json(out_dir / "metrics.json", metrics_json(results))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>Dataset: <code>{html.escape(str(results.get('dataset', '')))}</code>. Bold rows are each "
             "category's headline (LOCO: mean of logical and structural; otherwise all test images). "
             "AUPRO: PRO integrated to FPR 0.3 / 0.3 (MVTec AD). AUC-sPRO: saturated PRO of MVTec LOCO, "
             "integrated to each FPR limit / limit; FPR over defect-free pixels of the evaluated images.</p>",
             _table(results)]
    for cat, r in progress(results["categories"].items(), desc="report", total=len(results["categories"])):
        slug = _slug(cat)
        fig = _plot_curves(r, out_dir / "figures" / f"{slug}_curves.png")
        counts = ", ".join(f"{k}: {v}" for k, v in r.get("n_images", {}).items())
        parts.append(f"<h2>{html.escape(cat)}</h2><p>Test images: {html.escape(counts)}. Image score: "
                     f"<code>{html.escape(str(r.get('image_score')))}</code>.</p>"
                     f"<img src='{fig.relative_to(out_dir).as_posix()}' alt='curves of {html.escape(cat)}'>")
        if r.get("per_defect"):
            parts.append(_defect_table(r["per_defect"]))
        extras = [(cap, Path(p)) for cap, p in (extra_images or {}).get(cat, ()) if Path(p).is_file()]
        if extras:
            figs = []
            for i, (caption, src) in enumerate(extras):
                dst = out_dir / "extras" / f"{slug}_{i}{src.suffix}"
                atomic_write_bytes(dst, src.read_bytes())
                figs.append(f"<figure><img src='{dst.relative_to(out_dir).as_posix()}' alt='{html.escape(caption)}'>"
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            parts.append(f"<h3>Components and generated anomalies</h3><div class=gal>{''.join(figs)}</div>")
        for row_title, entries in _gallery(r, out_dir, gallery):
            figs = "".join(
                f"<figure><img src='{html.escape(e['thumb'])}' alt='{html.escape(e['image_id'])}'>"
                f"<figcaption>{html.escape(e['label'])}/{html.escape(e['image_id'])}<br>score "
                f"{e['score']:.4g}</figcaption></figure>" for e in entries)
            parts.append(f"<h3>{html.escape(row_title)}</h3><div class=gal>{figs or '<p>none</p>'}</div>")
    parts.append("<p style='color:#888'>Heat maps share one colour scale per category (blue low, red high); "
                 "green lines are ground-truth contours.</p></body></html>")
    return atomic_write_text(out_dir / "report.html", "\n".join(parts))
