"""Component recovery: adjusted Rand index between learned classes and truth parts (the family's report seeds by
default, ``--family none`` for the built-in benchmark).

Usage:
    python bench/components_ari.py [--data DIR] [--size 256] [--train 60] [--eval 20] [--variants backbone,color]

Without ``--data`` a fresh benchmark is generated into a temporary folder (comgen.data.synth). With ``--data``,
``--family`` picks among the folder's categories (every one without it). The learner is fitted on the train split
and scored on held-out good images (validation, else test/good): ARI over all pixels, plus K found vs the true
number of part classes + background. On family categories two more columns:
- ``split``: of the part types that share a colour with another type (and differ in shape), the pairs whose
  types land in different classes (each type's class is the most frequent class over its pixels);
- ``pale``: recall of the instances of low-contrast part types. An instance is found when its most frequent class
  differs from the most frequent class of the ring of pixels around it (the background or the fixture it lies on).

With ``--stability`` a second model is fitted on the next ``--train`` training images, and ``agree`` is the ARI
between the two models' class maps of the held-out images: how much the classes hang on which normal images the
learner saw (1.0: the same split from either sample); empty where fewer than 8 further training images exist.
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
    "backbone": dict(use_backbone=True, instances=False),
    "color": dict(use_backbone=False, instances=False),
    "instances": dict(use_backbone=True, instances=True),
}


def held_out(ds, cat):
    s = ds.samples(cat, "validation")
    return s if s else [x for x in ds.samples(cat, "test") if x.kind == "good"]


def majority(values: np.ndarray, k: int) -> int:
    return int(np.bincount(values.ravel(), minlength=k).argmax()) if values.size else -1


def same_colour_pairs(cat: str) -> list[tuple[int, int]]:
    """Pairs of item part types of a family category that share a palette colour and differ in outline (a square
    and a four-sided polygon are one figure, so such a pair is left out: colour and shape cannot tell it apart)."""
    from comgen.data.family.spec import draw_spec, family_seed, is_family

    if not is_family(cat):
        return []
    items = [p for p in draw_spec(family_seed(cat)).parts if not p.fixture]
    return [(a.label, b.label) for i, a in enumerate(items) for b in items[i + 1:]
            if set(a.colors) & set(b.colors) and a.outline != b.outline]


def pale_labels(cat: str) -> list[int]:
    from comgen.data.family.spec import draw_spec, family_seed, is_family

    if not is_family(cat):
        return []
    return [p.label for p in draw_spec(family_seed(cat)).parts if p.name.startswith("pale_")]


def split_counts(truth: np.ndarray, seg: np.ndarray, pairs: list[tuple[int, int]], k: int) -> tuple[int, int]:
    cls = {t: majority(seg[truth == t], k) for t in {x for p in pairs for x in p}}
    ok = sum(1 for a, b in pairs if cls[a] >= 0 and cls[b] >= 0 and cls[a] != cls[b])
    return ok, sum(1 for a, b in pairs if cls[a] >= 0 and cls[b] >= 0)


def instance_recall(truth: np.ndarray, seg: np.ndarray, labels: list[int], k: int) -> tuple[int, int]:
    """(found, total) instances of ``labels``: an instance's majority class differs from its ring's."""
    found = total = 0
    ring_px = max(2, truth.shape[-1] // 64)
    kernel = np.ones((2 * ring_px + 1,) * 2, np.uint8)
    for t_map, s_map in zip(truth, seg):
        for t in labels:
            n, comp = cv2.connectedComponents((t_map == t).astype(np.uint8))
            for i in range(1, n):
                inst = comp == i
                if inst.sum() < 12:
                    continue
                ring = (cv2.dilate(inst.astype(np.uint8), kernel) > 0) & (t_map != t)
                total += 1
                found += majority(s_map[inst], k) != majority(s_map[ring], k)
    return found, total


def run(data: Path, cats: list[str], size: int, n_train: int, n_eval: int, variants: list[str], weights: str,
        extra: dict | None = None, stability: bool = False) -> None:
    from comgen.data.readers import open_dataset
    from comgen.data.synth.truth import load_truth

    ds = open_dataset(data)
    cats = ds.select_categories(cats) if cats else ds.categories()  # a ConfigError names an absent one
    print(f"{'category':<22}{'variant':<10}{'K':>4}{'parts+bg':>10}{'ARI':>8}{'split':>8}{'pale':>8}{'fit s':>8}"
          + (f"{'agree':>8}" if stability else ""))
    totals: dict[str, list] = {}
    for cat in cats:
        train = ds.samples(cat, "train")
        ev = held_out(ds, cat)[:n_eval]
        tr_imgs = load_images(train[:n_train], size)
        other = load_images(train[n_train:2 * n_train], size) if stability else None
        ev_imgs = load_images(ev, size)
        truth = np.stack([cv2.resize(load_truth(s), (size, size), interpolation=cv2.INTER_NEAREST) for s in ev])
        n_parts = len(np.unique(truth))
        for v in variants:
            cfg = LearnerConfig(image_size=size, backbone_weights=weights, **{**VARIANTS[v], **(extra or {})})
            t0 = time.perf_counter()
            model = learn_components(tr_imgs, cfg)
            fit_s = time.perf_counter() - t0
            seg = model.segment(ev_imgs)
            if n_parts < 2:  # a texture: one surface, nothing to recover
                print(f"{cat:<22}{v:<10}{model.num_classes:>4}{n_parts:>10}{'-':>8}{fit_s:>8.1f}", flush=True)
                continue
            ari = adjusted_rand_score(truth.ravel(), seg.ravel())
            k = model.num_classes
            sp = split_counts(truth, seg, same_colour_pairs(cat), k)
            pr = instance_recall(truth, seg, pale_labels(cat), k)
            tot = totals.setdefault(v, [[], 0, 0, 0, 0, []])
            tot[0].append(ari)
            tot[1] += sp[0]; tot[2] += sp[1]; tot[3] += pr[0]; tot[4] += pr[1]  # noqa: E702
            agree = ""
            if other is not None and len(other) >= 8:
                twin = learn_components(other, cfg).segment(ev_imgs)
                tot[5].append(adjusted_rand_score(seg.ravel(), twin.ravel()))
                agree = f"{tot[5][-1]:>8.3f}"
            frac = lambda c: f"{c[0]}/{c[1]}" if c[1] else "-"  # noqa: E731
            print(f"{cat:<22}{v:<10}{k:>4}{n_parts:>10}{ari:>8.3f}{frac(sp):>8}{frac(pr):>8}{fit_s:>8.1f}{agree}",
                  flush=True)
    for v, (aris, s_ok, s_n, p_ok, p_n, agrees) in totals.items():
        agree = f", agree {np.mean(agrees):.3f} (min {min(agrees):.3f})" if agrees else ""
        share = lambda ok, n: f"{ok / n:.2f}" if n else "-"  # noqa: E731  # no pair or pale part to find
        print(f"{'mean':<22}{v:<10}{'':>4}{'':>10}{np.mean(aris):>8.3f}{share(s_ok, s_n):>8}"
              f"{share(p_ok, p_n):>8}   (min ARI {min(aris):.3f}{agree})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--categories", default="", help="comma-separated categories (overrides --family)")
    ap.add_argument("--family", default=None, help="seeds of the procedural family: report (default without "
                                                   "--data; with --data every category of it), dev, a range "
                                                   "like 1000-1011, or none for the built-in categories")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=60)
    ap.add_argument("--eval", type=int, default=20)
    ap.add_argument("--variants", default="backbone,color")
    ap.add_argument("--weights", default="auto")
    ap.add_argument("--stability", action="store_true", help="also fit on the next --train images and report "
                                                                  "the two models' agreement")
    ap.add_argument("--learn", default="", help="learner options for every variant as JSON, e.g. "
                                                 "'{\"instance_k_max\": 3}'")
    a = ap.parse_args()
    from comgen.benchmarks.cli import bench_categories, learner_options
    from comgen.errors import ComgenError, ConfigError

    try:
        extra = learner_options(a.learn)
        cats = bench_categories(a.categories, a.family, a.data)
    except ConfigError as exc:
        ap.error(str(exc))
    variants = [v for v in a.variants.split(",") if v]
    tmp = None  # a benchmark made here is deleted at the end; one passed with --data is the user's
    if a.data is None:
        from comgen.data.synth import SynthConfig, generate_benchmark

        tmp = Path(tempfile.mkdtemp(prefix="comgen-ari-"))
        kw = dict(size=a.size, n_train=a.train * (2 if a.stability else 1), n_validation=a.eval, n_test=8)
        if cats:
            kw["categories"] = cats
        generate_benchmark(tmp, SynthConfig(**kw))
        a.data = tmp
    try:
        run(a.data, cats, a.size, a.train, a.eval, variants, a.weights, extra, a.stability)
    except ComgenError as exc:  # an unreadable dataset or image: one line naming the file
        raise SystemExit(f"error: {exc}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
