"""Predict throughput of the CSDA detector vs the bare backbone forward, and peak memory.

Measures at the working size (default 256 px), batch B, on CPU threads T:
  backbone  : images/s of the frozen backbone forward alone (float tensors in, features out);
  predict   : images/s of Detector.predict (uint8 -> tensor, backbone, global retrieval, patch alignment,
              CSDA head, calibration, map back to the original size);
  ratio     : predict / backbone (target >= 0.7);
  + prior   : the same with the composition prior (segmentation at the learner's size + density), which the
              detector adds when the run has a component model (``--no-prior`` skips this row).
Predict runs as for a long job (>= ``COMPILE_MIN_IMAGES`` images): alignment and head through torch.compile; the
first call, which compiles, is timed on its own (run with an empty ``TORCHINDUCTOR_CACHE_DIR`` for the cold cost).
The head's weights do not change its cost, so an untrained head is used; the bank holds N synthetic normal
images (the toy two-object world). Peak RSS is the process maximum after each phase.

    python bench/detect_speed.py [--size 256] [--batch 8] [--bank 64] [--threads 2] [--repeats 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "detect"))


def rss_mb() -> float:
    from comgen.runtime import peak_rss_mb

    return peak_rss_mb()


def toy(n: int, size: int, seed: int) -> np.ndarray:
    from conftest import toy_image  # the toy world of the detector tests

    rng = np.random.default_rng(seed)
    return np.stack([toy_image(rng, size, "good")[0] for _ in range(n)])


def paired(fns: list, repeats: int) -> list[np.ndarray]:  # noqa: ANN001
    """Seconds of each function per round, the functions run back to back in every round.

    Why paired: on a shared VM the speed of the cores drifts by up to 2x over a minute, so a ratio of two medians
    taken minutes apart mixes the drift into the ratio; per-round ratios of back-to-back runs cancel most of it.
    """
    for fn in fns:
        fn()  # warm-up
    out = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            out[i].append(time.perf_counter() - t)
    return [np.asarray(o) for o in out]


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    """Median seconds of ``fn`` over ``repeats`` runs after a warm-up."""
    return float(np.median(paired([fn], repeats)[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bank", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--no-prior", action="store_true", help="skip the composition-prior rows")
    ap.add_argument("--default-malloc", action="store_true",
                    help="keep glibc's default allocator settings (the comgen CLI tunes them; see comgen.runtime)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from comgen.runtime import tune_allocator

    tuned = False if args.default_malloc else tune_allocator()

    from comgen.features.backbone import BackboneConfig, build_backbone, to_tensor
    from comgen.detect.config import DetectorConfig
    from comgen.detect.csda import CSDA
    import comgen.detect.predict as predict_module
    from comgen.detect.predict import Detector
    from comgen.features.memory import MemoryBank, MemoryBankConfig

    cfg = DetectorConfig(image_size=args.size, backbone=BackboneConfig(name=args.backbone, weights=args.weights))
    backbone = build_backbone(cfg.backbone)
    rss0 = rss_mb()
    bank = MemoryBank.build(toy(args.bank, args.size, 0), [f"n{i}" for i in range(args.bank)], backbone,
                            MemoryBankConfig.from_dict({**cfg.bank, "image_size": args.size, "k": cfg.head.k}))
    cal = {"score_mean": 0.0, "score_std": 1.0, "map_mean": 0.0, "map_std": 1.0, "threshold": 3.0}
    predict_module.COMPILE_MIN_IMAGES = 0  # the steady state of a long job, though each call predicts one batch
    det = Detector(cfg, CSDA(backbone, cfg.head), bank, cal, Path("."), torch.device("cpu"))
    imgs = toy(args.batch, args.size, 1)
    x = to_tensor(imgs)
    with torch.no_grad():
        t0 = time.perf_counter()
        det.predict(imgs, notice=None)  # the first call compiles (or traces from inductor's disk cache)
        t_first = time.perf_counter() - t0
        bb_runs, pred_runs = paired([lambda: backbone(x), lambda: det.predict(imgs, notice=None)], args.repeats)
    t_bb, t_pred = float(np.median(bb_runs)), float(np.median(pred_runs))
    ratios = bb_runs / pred_runs
    rss_pred = rss_mb()
    # where predict's time goes
    feats = det.model.features(x)
    t_query = timed(lambda: bank.query(feats, cfg.head.k), args.repeats)
    idx, _ = bank.query(feats, cfg.head.k)
    t_align = timed(lambda: bank.align(feats, idx), args.repeats)
    aligned = bank.align(feats, idx)
    with torch.no_grad():
        t_head = timed(lambda: det._head(feats, aligned, (args.size, args.size)), args.repeats)  # as predict runs it
    rows = [("backbone forward", t_bb), ("predict (all)", t_pred), ("  retrieval", t_query),
            ("  alignment", t_align), ("  CSDA head", t_head)]
    t_pred_p = None
    if not args.no_prior:
        from comgen.components.features import LearnerConfig
        from comgen.components.learner import learn_components
        from comgen.detect.composition_prior import CompositionPrior

        model = learn_components(toy(16, args.size, 2), LearnerConfig(image_size=args.size, k=3))
        prior = CompositionPrior.fit(model, toy(24, args.size, 3), toy(8, args.size, 4))
        det_p = Detector(cfg, det.model, bank, cal, Path("."), torch.device("cpu"), prior)
        with torch.no_grad():
            bb_p, pred_p = paired([lambda: backbone(x), lambda: det_p.predict(imgs, notice=None)], args.repeats)
        t_pred_p, ratios_p = float(np.median(pred_p)), bb_p / pred_p
        shared = det_p._prior_scale is not None
        rows += [(f"predict with composition prior ({'shares' if shared else 'own'} backbone features)", t_pred_p),
                 ("  composition prior alone (own backbone pass)", timed(lambda: prior.score(imgs), args.repeats))]
    rss_prior = rss_mb()
    b = args.batch
    print(f"backbone {backbone.name} ({backbone.source}), {args.size} px, batch {b}, {args.threads} threads, "
          f"bank {args.bank} images, allocator {'tuned as by the CLI' if tuned else 'glibc default'}")
    print("| what | ms / batch | images / s |\n|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t * 1000:.1f} | {b / t:.1f} |")
    print(f"\nratio predict / backbone = {np.median(ratios):.2f} (median of {len(ratios)} back-to-back rounds; "
          f"quartiles {np.quantile(ratios, 0.25):.2f}-{np.quantile(ratios, 0.75):.2f}; target >= 0.7)")
    if t_pred_p is not None:
        print(f"ratio predict with composition prior / backbone = {np.median(ratios_p):.2f} "
              f"(quartiles {np.quantile(ratios_p, 0.25):.2f}-{np.quantile(ratios_p, 0.75):.2f})")
    from comgen.compiled import compile_enabled

    how = "torch.compile on: compiling, or tracing from the disk cache" if compile_enabled() else "eager"
    print(f"first predict call: {t_first:.1f} s ({how})")
    print(f"peak RSS: after model+bank {rss0:.0f} MB, after backbone and predict {rss_pred:.0f} MB, "
          f"after the prior rows {rss_prior:.0f} MB")


if __name__ == "__main__":
    main()
