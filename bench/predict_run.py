"""Predict throughput of a trained run on real images, with the share of each step.

Why: ``detect_speed.py`` times the network on a toy world; a real run adds the composition prior (segmentation by
both component models, compositions, densities), the patch memory and the global branch, whose costs depend on
the category. This times ``Detector.predict`` on a run's own test images, as a long job would call it, and
profiles one pass to say where the time goes.

    python bench/predict_run.py RUN_DIR IMAGE_DIR [--images 96] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

STEPS = {  # (module, function) profiled -> the step it stands for (cumulative time)
    ("predict.py", "_forward"): "backbone + alignment + network",
    ("composition_prior.py", "segment"): "prior: segmentation (both models)",
    ("composition_prior.py", "nll"): "prior: compositions and densities",
    ("predict.py", "_memory_scores"): "patch memory",
    ("predict.py", "_global_scores"): "global branch",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("images", type=Path, help="a folder of images (searched recursively)")
    ap.add_argument("--images", dest="n", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch

    from comgen.data.imageio import read_rgb
    from comgen.detect.predict import Detector
    from comgen.errors import ComgenError

    torch.set_num_threads(args.threads)
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:args.n]
    if not files:
        sys.exit(f"{args.images}: no images")
    try:
        det = Detector.load(args.run, device="cpu")
        images = [read_rgb(p) for p in files]
    except ComgenError as exc:
        sys.exit(str(exc))
    det.predict(images[:16], notice=None)  # warm-up
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        det.predict(images, notice=None)
        rates.append(len(images) / (time.perf_counter() - t0))
    prof = cProfile.Profile()
    prof.runcall(det.predict, images, notice=None)
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = max(v[3] for (path, _, name), v in stats.items() if name == "predict" and path.endswith("predict.py"))
    print(f"{args.run}: {len(images)} images, {args.threads} threads, prior models: "
          f"{0 if det.prior is None else 1 + (det.prior.partner is not None)}")
    print(f"predict {np.median(rates):.1f} img/s (median of {args.repeats}; "
          f"min {min(rates):.1f}, max {max(rates):.1f})")
    for (module, fn), step in STEPS.items():
        cum = sum(v[3] for (path, _, name), v in stats.items() if name == fn and path.endswith(module))
        print(f"  {step:<38} {100 * cum / total:5.1f} % of the profiled pass")


if __name__ == "__main__":
    main()
