"""CSDA on the built-in benchmark: image AUROC (logical / structural), sPRO@0.05, training time, peak memory.

Per category of the synthetic LOCO-style benchmark: learn components, generate compositional anomalies,
train the detector on them (``train_detector``), write test maps (``predict_dataset``) and evaluate them with the
evaluation module. Training and prediction each run in a fresh child process so their peak RSS is their own.

    python bench/detect_auroc.py --out /tmp/bench_detect                 # 256 px, full-size benchmark
    python bench/detect_auroc.py --out /tmp/bd --quick                   # 64 px, few images (smoke run)
    python bench/detect_auroc.py --out /tmp/bd --backbone wide_resnet50_2  # where its weights are cached
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from child import run_in_child


def _child(fn_name: str, kwargs: dict[str, Any], q: Any) -> None:
    import torch

    torch.set_num_threads(kwargs.pop("threads"))
    t = time.perf_counter()
    try:
        if fn_name == "train":
            from comgen.detect.config import DetectorConfig
            from comgen.detect.train import train_detector

            res = train_detector(kwargs["run"], DetectorConfig.from_dict(kwargs["cfg"]), log=lambda m: None)
            out: dict[str, Any] = {"epochs": res.epochs_run,
                                   "val_auroc_gen": res.calibration.get("val_auroc_generated")}
        else:
            from comgen.detect.predict import predict_dataset

            rows = predict_dataset(kwargs["run"], "test")
            out = {"rows": rows}
        out["seconds"] = time.perf_counter() - t
        from comgen.runtime import peak_rss_mb

        out["peak_mb"] = peak_rss_mb()
        q.put(out)
    except Exception as exc:  # report, do not hang the parent
        q.put({"error": f"{exc.__class__.__name__}: {exc}"})


def in_child(fn_name: str, **kwargs: Any) -> dict[str, Any]:
    try:
        return run_in_child(_child, fn_name, kwargs)
    except RuntimeError as exc:
        raise RuntimeError(f"{fn_name}: {exc}") from None


def image_auroc(rows: list[dict[str, Any]], kind: str, key: str = "score") -> float:
    from sklearn.metrics import roc_auc_score

    sel = [r for r in rows if r["kind"] in ("good", kind)]
    y = [r["kind"] == kind for r in sel]
    if not any(y) or all(y):
        return float("nan")
    vals = [r.get(key) for r in sel]
    if any(v is None or not np.isfinite(v) for v in vals):
        return float("nan")
    return float(roc_auc_score(y, vals))


def find_spro(metrics: Any, kind: str) -> float | None:
    """sPRO@0.05 of ``kind`` from evaluate_category's result, whatever its nesting."""
    flat: dict[str, Any] = {}

    def walk(d: Any, prefix: str) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            flat[prefix] = d

    walk(metrics, "")
    hits = [(k, float(v)) for k, v in flat.items() if "spro" in k.lower() and kind in k.lower()
            and isinstance(v, (int, float)) and not isinstance(v, bool)]
    for k, v in hits:
        if "0.05" in k:
            return v
    return hits[0][1] if len(hits) == 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=40)
    ap.add_argument("--n-test", type=int, default=150)
    ap.add_argument("--n-anomalies", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--categories", default="")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="64 px, 12 train / 4 val / 12 test, 24 anomalies, 4 epochs")
    args = ap.parse_args()
    if args.quick:
        args.size, args.n_train, args.n_val, args.n_test, args.n_anomalies, args.epochs = 64, 12, 4, 12, 24, 4

    from comgen.cli import main as cli
    from comgen.data.synth import CATEGORIES, SynthConfig, generate_benchmark
    from comgen.features.backbone import BackboneConfig
    from comgen.detect.config import DetectorConfig
    from comgen.rundir import RunDir

    cats = [c for c in args.categories.split(",") if c] or list(CATEGORIES)
    data = args.out / "data"
    if not all((data / c).exists() for c in cats):
        generate_benchmark(data, SynthConfig(size=args.size, n_train=args.n_train, n_validation=args.n_val,
                                             n_test=args.n_test, categories=cats))
    results = []
    for cat in cats:
        run_dir = args.out / "runs" / cat
        t0 = time.perf_counter()
        run = RunDir.create(run_dir, data, cat)
        if not (run.components / "config.yaml").exists():
            assert cli(["learn", str(data), "-c", cat, "--out", str(run_dir), "--image-size", str(args.size)]) == 0
        # always through `comgen generate`: a finished set resumes at once, a set of other settings or code
        # defaults is refused (one line) instead of being reused
        assert cli(["generate", str(data), "-c", cat, "--out", str(run_dir), "--n", str(args.n_anomalies),
                    "--image-size", str(args.size)]) == 0
        t_stage1 = time.perf_counter() - t0
        cfg = DetectorConfig(image_size=args.size, epochs=args.epochs,
                             backbone=BackboneConfig(name=args.backbone, weights=args.weights))
        tr = in_child("train", run=str(run_dir), cfg=cfg.to_dict(), threads=args.threads)
        pr = in_child("predict", run=str(run_dir), threads=args.threads)
        rows = pr["rows"]
        spro_l = spro_s = None
        try:
            from comgen.data.readers import open_dataset
            from comgen.evaluate.run import evaluate_category

            metrics = evaluate_category(open_dataset(data), cat, run.maps)
            spro_l, spro_s = find_spro(metrics, "logical"), find_spro(metrics, "structural")
        except ImportError as exc:
            print(f"[{cat}] evaluation module unavailable ({exc}); sPRO not computed")
        r = {"category": cat, "auroc_logical": image_auroc(rows, "logical"),
             "auroc_structural": image_auroc(rows, "structural"), "spro_logical": spro_l,
             "net_logical": image_auroc(rows, "logical", "network_score"),
             "net_structural": image_auroc(rows, "structural", "network_score"), "spro_structural": spro_s,
             "train_s": tr["seconds"], "epochs": tr["epochs"], "train_peak_mb": tr["peak_mb"],
             "predict_s": pr["seconds"], "predict_peak_mb": pr["peak_mb"], "n_test": len(rows),
             "stage1_s": t_stage1}
        results.append(r)
        print(r, flush=True)

    def f(v: Any, p: int = 3) -> str:
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{p}f}"

    print(f"\nCSDA on the built-in benchmark: {args.size} px, backbone {args.backbone} ({args.weights}), "
          f"{args.n_anomalies} compositional anomalies, <= {args.epochs} epochs, {args.threads} threads")
    print("| category | img AUROC logical | img AUROC structural | sPRO@0.05 log | sPRO@0.05 str | train s | epochs "
          "| train peak MB | predict s (n) | predict peak MB | network alone: logical / structural |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['category']} | {f(r['auroc_logical'])} | {f(r['auroc_structural'])} | {f(r['spro_logical'])} "
              f"| {f(r['spro_structural'])} | {f(r['train_s'], 0)} | {r['epochs']} | {f(r['train_peak_mb'], 0)} "
              f"| {f(r['predict_s'], 1)} ({r['n_test']}) | {f(r['predict_peak_mb'], 0)} "
              f"| {f(r['net_logical'])} / {f(r['net_structural'])} |")
    mean_l = np.nanmean([r["auroc_logical"] for r in results])
    mean_s = np.nanmean([r["auroc_structural"] for r in results])
    net = [np.nanmean([r[k] for r in results]) for k in ("net_logical", "net_structural")]
    print(f"| mean | {mean_l:.3f} | {mean_s:.3f} | | | {np.mean([r['train_s'] for r in results]):.0f} | | | | "
          f"| {f(net[0])} / {f(net[1])} |")


if __name__ == "__main__":
    main()
