"""Mask IoU of Stage II residual masks against the exact edit masks of compositional anomalies, per edit kind,
on the built-in synthetic benchmark, with a random and the pretrained (offline EfficientNet-Lite0) backbone.

    python bench/mask_iou.py [--size 128] [--n-train 40] [--n 40] [--categories a,b] [--out /tmp/mask_iou_bench]

Target: mean IoU >= 0.6 over logical edits. By default an anomaly's source image may be its reference
(as in the design); --exclude-source measures RNA with other normal images only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--n", type=int, default=40, help="anomalies generated per category")
    ap.add_argument("--categories", default="", help="comma-separated (default: all synth categories)")
    ap.add_argument("--backbones", default="random,auto", help="weights settings to compare")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--exclude-source", action="store_true")
    ap.add_argument("--no-gate", action="store_true", help="ungated residual masks (RNA alone)")
    ap.add_argument("--seed", type=int, default=0, help="benchmark and generator seed (tuning used 0)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/comgen_mask_iou_bench")
    args = ap.parse_args()
    os.environ.setdefault("COMGEN_QUIET", "1")
    import torch

    torch.set_num_threads(args.threads)
    try:
        from comgen.data.synth import CATEGORIES, SynthConfig, generate_benchmark
        from comgen.generate.commands import run_generate
    except ImportError as exc:
        raise SystemExit(f"needs the data and generator stages ({exc})") from None
    from comgen.features.backbone import BackboneConfig
    from comgen.features.memory import MemoryBankConfig
    from comgen.masks.run import MaskConfig, compute_masks
    from comgen.rundir import RunDir

    cats = [c for c in args.categories.split(",") if c] or list(CATEGORIES)
    out = Path(args.out)
    data = out / "data"
    missing = [c for c in cats if not (data / c).is_dir()]
    if missing:  # only the missing categories, so existing ones (and anomalies made from them) stay valid
        generate_benchmark(data, SynthConfig(size=args.size, n_train=args.n_train, n_validation=2, n_test=2,
                                             categories=missing, seed=args.seed))
        for c in missing:
            shutil.rmtree(out / "runs" / c, ignore_errors=True)
    results: dict[str, dict[str, dict]] = {}
    for cat in cats:
        run_root = out / "runs" / cat
        # made anew every run (seconds): a set saved before the generator's defaults went into its config.yaml
        # passes the config check even when the code has changed since, and once gave the old generator's figures
        shutil.rmtree(run_root, ignore_errors=True)
        run_generate(data, cat, {"n": args.n, "image_size": args.size, "backend": "compositional", "seed": args.seed},
                     out=run_root, log=lambda m: None)
        for weights in args.backbones.split(","):
            cfg = MaskConfig(backbone=BackboneConfig(weights=weights),
                             bank=MemoryBankConfig(image_size=args.size, k=args.k),
                             exclude_source=args.exclude_source, gate=not args.no_gate)
            t = time.perf_counter()
            rep = compute_masks(RunDir.open(run_root), "compositional", cfg, rebuild=True)
            rep["seconds"] = time.perf_counter() - t
            results.setdefault(weights, {})[cat] = rep
            print(f"{cat:<20} {weights:<7} logical {rep['logical_mean'] or float('nan'):.3f}  gate-only "
                  f"{rep['gate_only_logical_mean'] or float('nan'):.3f}  "
                  f"({rep['n']} anomalies, {rep['seconds']:.0f} s)", flush=True)
    kinds = sorted({k for per in results.values() for r in per.values() for k in r["per_kind"]})
    print(f"\nmask IoU per edit kind ({args.size}px, k={args.k}, seed {args.seed}, source "
          f"{'excluded' if args.exclude_source else 'allowed'}, {'no gate' if args.no_gate else 'gated'}, "
          f"categories: {', '.join(cats)})")
    g = [it["gate_iou"] for per in list(results.values())[:1] for r in per.values() for it in r["items"]
         if it["gate_iou"] is not None and it["category"] == "logical"]
    if g:
        print(f"reference: the generator's gate map alone (>0.5) has logical IoU {np.mean(g):.3f} ({len(g)})")
    print(f"{'edit kind':<16}" + "".join(f"{w + ' (n)':>18}" for w in results))
    for kind in kinds + ["logical (items)", "logical (kinds)", "structural", "all"]:
        row = f"{kind:<16}"
        for w, per in results.items():
            if kind in kinds:
                vals = [(r["per_kind"][kind]["mean_iou"], r["per_kind"][kind]["n"]) for r in per.values()
                        if kind in r["per_kind"]]
                n = sum(v[1] for v in vals)
                m = sum(v[0] * v[1] for v in vals) / n if n else float("nan")
            else:
                key = {"logical (items)": "logical_mean", "logical (kinds)": "logical_kind_mean",
                       "structural": "structural_mean", "all": "all_mean"}[kind]
                items = [it for r in per.values() for it in r["items"]]
                if key == "logical_kind_mean":
                    vals = [np.mean([it["iou"] for it in items if it["kind"] == kd]) for kd in kinds
                            if any(it["kind"] == kd and it["category"] == "logical" for it in items)]
                    n, m = len(vals), float(np.mean(vals)) if vals else float("nan")
                else:
                    sel = [it["iou"] for it in items if key == "all_mean" or it["category"] == key.split("_")[0]]
                    n, m = len(sel), float(np.mean(sel)) if sel else float("nan")
            row += f"{m:>12.3f} ({n:>3})"
        print(row)


if __name__ == "__main__":
    main()
