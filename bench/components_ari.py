"""Component recovery: adjusted Rand index between learned classes and truth parts (the family's report seeds by
default, ``--family none`` for the built-in benchmark).

Usage:
    python bench/components_ari.py [--data DIR] [--size 256] [--train 60] [--eval 20] [--variants backbone,color]

Without ``--data`` a fresh benchmark is generated into a temporary folder (comgen.data.synth). The learner is
fitted on the train split and scored on held-out good images (validation, else test/good): ARI over all
pixels, plus K found vs the true number of part classes + background. Target: ARI >= 0.8 per category.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("COMGEN_QUIET", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from comgen.components.features import LearnerConfig  # noqa: E402
from comgen.components.learner import learn_components, load_images  # noqa: E402

VARIANTS = {
    "backbone": dict(use_backbone=True),
    "color": dict(use_backbone=False),
}


def held_out(ds, cat):
    s = ds.samples(cat, "validation")
    return s if s else [x for x in ds.samples(cat, "test") if x.kind == "good"]


def run(data: Path, cats: list[str], size: int, n_train: int, n_eval: int, variants: list[str], weights: str) -> None:
    from comgen.data.readers import open_dataset
    from comgen.data.synth.truth import load_truth

    ds = open_dataset(data)
    cats = cats or ds.categories()
    print(f"{'category':<22}{'variant':<10}{'K':>4}{'parts+bg':>10}{'ARI':>8}{'fit s':>8}")
    for cat in cats:
        train = ds.samples(cat, "train")[:n_train]
        ev = held_out(ds, cat)[:n_eval]
        tr_imgs = load_images(train, size)
        ev_imgs = load_images(ev, size)
        truth = np.stack([cv2.resize(load_truth(s), (size, size), interpolation=cv2.INTER_NEAREST) for s in ev])
        n_parts = len(np.unique(truth))
        for v in variants:
            cfg = LearnerConfig(image_size=size, backbone_weights=weights, **VARIANTS[v])
            t0 = time.perf_counter()
            model = learn_components(tr_imgs, cfg)
            fit_s = time.perf_counter() - t0
            seg = model.segment(ev_imgs)
            if n_parts < 2:  # a texture: one surface, nothing to recover
                print(f"{cat:<22}{v:<10}{model.num_classes:>4}{n_parts:>10}{'-':>8}{fit_s:>8.1f}", flush=True)
                continue
            ari = adjusted_rand_score(truth.ravel(), seg.ravel())
            print(f"{cat:<22}{v:<10}{model.num_classes:>4}{n_parts:>10}{ari:>8.3f}{fit_s:>8.1f}", flush=True)


def family_categories(seeds: str) -> list[str]:
    """The family's categories of ``seeds`` ([] for "none": the built-in categories)."""
    from comgen.data.family import family_categories as names

    return [] if seeds == "none" else names(seeds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--categories", default="", help="comma-separated categories (overrides --family)")
    ap.add_argument("--family", default="report", help="seeds of the procedural family: report (default), dev, "
                                                      "a range like 1000-1011, or none for the built-in categories")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--eval", type=int, default=20)
    ap.add_argument("--variants", default="backbone,color")
    ap.add_argument("--weights", default="auto")
    a = ap.parse_args()
    cats = [c for c in a.categories.split(",") if c] or (family_categories(a.family) if a.data is None else [])
    variants = [v for v in a.variants.split(",") if v]
    tmp = None  # a benchmark made here is deleted at the end; one passed with --data is the user's
    if a.data is None:
        from comgen.data.synth import SynthConfig, generate_benchmark

        tmp = Path(tempfile.mkdtemp(prefix="comgen-ari-"))
        kw = dict(size=a.size, n_train=a.train, n_validation=a.eval, n_test=8)
        if cats:
            kw["categories"] = cats
        generate_benchmark(tmp, SynthConfig(**kw))
        a.data = tmp
    try:
        run(a.data, cats, a.size, a.train, a.eval, variants, a.weights)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
