"""Realism probe: can a linear classifier on pooled backbone features tell generated anomalies from real images?

For each category of the built-in benchmark, each back-end generates anomalies from the normal training images;
a logistic regression (standardised features, stratified k-fold cross-validation) then separates them from
real normal images the generators never saw (the validation split). Lower accuracy = harder to tell apart =
more realistic; 0.5 is chance. Features: pooled maps of the frozen backbone's layers (``--pool avg`` or ``avgmax``;
max pooling keeps small local anomalies from vanishing in the average).

``--against normal`` (the default protocol) takes real *normal* images as the real class. Then the probe also
detects the change a logical edit makes on purpose: a swapped colour or a missing part is a different image
whatever its rendering. ``--against anomalies`` takes the benchmark's real test anomalies as the real class, as
anomaly-generation papers compare generated with real defects. The probe then asks whether generated anomalies
look like real ones, and only rendering artefacts or a wrong defect distribution separate them. Crops come from
around each set's own masks.

``--region image`` probes whole images. That also rewards a back-end for changing *less*: a logical edit (an
extra or missing part) changes the global content on purpose, a small CutPaste scar hardly does. ``--region mask``
isolates realism: it probes crops around each anomaly's mask (bbox + margin) against the *same* box cut from a
real image, so location and size are matched and only the look of the edited region differs.

``--backends`` may include ``real``: the benchmark's own real test anomalies (logical and structural, at most
``--n``) in place of generated ones. Against normal images that row is the floor of the whole-image probe: how
separable a *real* anomaly is from a normal image by the change it makes, rendering aside. ``real-logical`` takes
the real logical anomalies alone: the floor to compare with ``--logical-ratio 1``.

    python bench/realism_probe.py --size 128 --train 40 --validation 40 --n 60 --region image --region mask \
        --against normal --against anomalies [--backends compositional,cutpaste,draem,nsa,real] [--logical-ratio 1]
    python bench/realism_probe.py ... --backends compositional,real-logical --logical-ratio 1
    python bench/realism_probe.py ... --backends compositional,cutpaste --seeds 0,1,2   # and the mean over seeds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import compositional_options  # bench/ sibling: the --compositional option


def pooled_features(images: np.ndarray, backbone, pool: str = "avgmax", batch: int = 16) -> np.ndarray:
    import torch

    feats = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
            maps = backbone(x)
            per = [m.mean(dim=(2, 3)) if pool == "avg" else torch.cat([m.mean(dim=(2, 3)), m.amax(dim=(2, 3))], 1)
                   for m in maps]
            feats.append(torch.cat(per, 1))
    return torch.cat(feats).numpy()


def square_box(mask: np.ndarray, margin: float = 0.25, min_side: float = 0.25) -> tuple[int, int, int]:
    """(y0, x0, side) of a square around ``mask``'s bbox plus ``margin``, at least ``min_side`` of the image and
    inside it; the whole image when the mask is empty."""
    size = mask.shape[0]
    ys, xs = np.nonzero(mask) if mask.any() else (np.array([0, size - 1]), np.array([0, size - 1]))
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    side = max((ys.max() - ys.min() + 1), (xs.max() - xs.min() + 1)) * (1 + 2 * margin)
    side = int(min(size, max(side, min_side * size)))
    return int(np.clip(round(cy - side / 2), 0, size - side)), int(np.clip(round(cx - side / 2), 0, size - side)), side


def _crop(image: np.ndarray, box: tuple[int, int, int], out: int) -> np.ndarray:
    import cv2

    y0, x0, side = box
    return cv2.resize(image[y0:y0 + side, x0:x0 + side], (out, out), interpolation=cv2.INTER_AREA)


def mask_crops(images: np.ndarray, masks: np.ndarray, real: np.ndarray, out: int, rng: np.random.Generator,
               margin: float = 0.25, min_side: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Square crops around each mask (fake) and the same boxes from random real images, resized to ``out`` px."""
    fake_c, real_c = [], []
    for img, mask in zip(images, masks):
        box = square_box(mask, margin, min_side)
        other = real[int(rng.integers(len(real)))]
        fake_c.append(_crop(img, box, out))
        real_c.append(_crop(other, box, out))
    return np.stack(real_c), np.stack(fake_c)


def own_crops(images: np.ndarray, masks: list[np.ndarray], out: int, margin: float = 0.25,
              min_side: float = 0.25) -> np.ndarray:
    """Square crops (bbox + margin, at least ``min_side`` of the image) around each image's own mask."""
    return np.stack([_crop(img, square_box(mask, margin, min_side), out) for img, mask in zip(images, masks)])


REAL_ROWS = {"real": ("logical", "structural", "defect"), "real-logical": ("logical",)}  # --backends rows of real anomalies


def real_anomalies(samples, size: int) -> tuple[np.ndarray, list[np.ndarray]]:  # noqa: ANN001
    """The test split's real anomalies at ``size`` px with the union of their ground-truth masks."""
    import cv2

    from comgen.data.imageio import resize_rgb

    imgs, masks = [], []
    for s in samples:
        imgs.append(resize_rgb(s.load_image(), size))
        gt = [m > 0 for m in s.load_masks()]
        union = np.any(np.stack(gt), 0) if gt else np.zeros(imgs[-1].shape[:2], bool)
        masks.append(cv2.resize(union.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0)
    return np.stack(imgs), masks


def probe_accuracy(real: np.ndarray, fake: np.ndarray, folds: int, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    m = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    x = np.concatenate([real[rng.permutation(len(real))[:m]], fake[rng.permutation(len(fake))[:m]]])
    y = np.r_[np.zeros(m), np.ones(m)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(n_splits=min(folds, m), shuffle=True, random_state=seed)
    scores = cross_val_score(clf, x, y, cv=cv)
    return float(scores.mean()), float(scores.std())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--train", type=int, default=40)
    ap.add_argument("--validation", type=int, default=40)
    ap.add_argument("--n", type=int, default=40, help="anomalies per back-end and category")
    ap.add_argument("--categories", default="all")
    ap.add_argument("--backends", default="compositional,cutpaste,draem,nsa")
    ap.add_argument("--weights", default="auto", help="backbone weights: auto | random | PATH")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds (replaces --seed): one probe per seed (its own benchmark images, "
                         "anomalies and folds), then the mean over seeds; one seed's figure moves by several points")
    ap.add_argument("--pool", choices=("avg", "avgmax"), default="avgmax")
    ap.add_argument("--region", action="append", choices=("image", "mask"), default=None,
                    help="probe whole images and/or crops around the masks (repeatable; default both)")
    ap.add_argument("--against", action="append", choices=("normal", "anomalies"), default=None,
                    help="real class: normal images (validation) and/or the real test anomalies (repeatable; "
                         "default normal)")
    ap.add_argument("--test", type=int, default=150, help="test images per category of the generated benchmark "
                                                          "(good + anomalies), for --against anomalies")
    ap.add_argument("--data", type=Path, default=None, help="reuse a synth benchmark folder")
    ap.add_argument("--logical-ratio", type=float, default=None,
                    help="share of logical edits of the compositional back-end (default: its config default); "
                         "1.0 probes its logical edits alone")
    compositional_options.add_argument(ap)
    args = ap.parse_args(argv)
    options = compositional_options.parse(ap, args.compositional)
    if args.logical_ratio is not None and not 0.0 <= args.logical_ratio <= 1.0:
        ap.error(f"--logical-ratio must be in [0, 1], got {args.logical_ratio}")
    from comgen.errors import ConfigError
    from comgen.benchmarks.cli import parse_seeds

    try:
        seeds = parse_seeds(args.seeds) if args.seeds else (args.seed,)
    except ConfigError as exc:
        ap.error(str(exc))
    os.environ.setdefault("COMGEN_QUIET", "1")
    from comgen.features.backbone import BackboneConfig, build_backbone

    backbone = build_backbone(BackboneConfig(weights=args.weights))  # once for every seed
    means = [probe_seed(args, seed, options, backbone) for seed in seeds]
    if len(seeds) > 1:
        keys = list(means[0])
        print(f"\n{'mean of seeds ' + ','.join(map(str, seeds)):<16}"
              + "".join(f"{np.nanmean([m[k] for m in means]):>26.3f}" for k in keys))
    return 0


def probe_seed(args: argparse.Namespace, seed: int, options: dict,
               backbone) -> dict[tuple[str, tuple[str, str]], float]:
    """One probe on the benchmark, anomalies and folds of ``seed``; prints its table, returns its mean row."""
    args = argparse.Namespace(**{**vars(args), "seed": seed})
    from comgen.data.readers import open_dataset
    from comgen.data.synth import CATEGORIES, SynthConfig, generate_benchmark
    from comgen.errors import ComgenError
    from comgen.generate.config import GenerateConfig
    from comgen.generate.registry import build_generator

    cats = list(CATEGORIES) if args.categories == "all" else args.categories.split(",")
    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="realism-")
        root = Path(tmp.name) / "synth"
        t0 = time.perf_counter()
        generate_benchmark(root, SynthConfig(size=args.size, n_train=args.train, n_validation=args.validation,
                                             n_test=args.test if "anomalies" in (args.against or []) or
                                             any(b in REAL_ROWS for b in args.backends.split(",")) else 4,
                                             seed=args.seed, categories=cats))
        print(f"synth data: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    ds = open_dataset(root)
    print(f"backbone {backbone.source}; image size {args.size}; {args.n} anomalies per back-end; "
          f"{args.folds}-fold logistic regression (chance = 0.5, lower = more realistic)")
    backends = args.backends.split(",")
    regions = [(a, r) for a in (args.against or ["normal"]) for r in (args.region or ["image", "mask"])]
    header = "".join(f"{b + '/' + a[:4] + '/' + r:>26}" for a, r in regions for b in backends)
    print(f"{'category':<16}{header}")
    table: dict[tuple[str, tuple[str, str]], list[float]] = {(b, ar): [] for ar in regions for b in backends}
    from comgen.data.imageio import resize_rgb

    for cat in cats:
        train = ds.samples(cat, "train")
        held = [s for s in ds.samples(cat, "validation") if s.kind == "good"] or train
        real_imgs = np.stack([resize_rgb(s.load_image(), args.size) for s in held])
        real = {"normal": (real_imgs, None)}
        anomalous = [s for s in ds.samples(cat, "test") if s.kind != "good"]
        if any(a == "anomalies" for a, _ in regions) or any(b in REAL_ROWS for b in backends):
            if not anomalous:
                print(f"  {cat}: no real test anomalies; --against anomalies and the real row skipped",
                      file=sys.stderr)
            else:
                real["anomalies"] = real_anomalies(anomalous, args.size)
        feats_of: dict[tuple[str, str], np.ndarray] = {}
        cells: dict[tuple[str, tuple[str, str]], str] = {}
        for b in backends:
            if b in REAL_ROWS:  # reference rows: real anomalies in place of generated ones
                if "anomalies" not in real:
                    continue
                pool = [i for i, s in enumerate(anomalous) if s.kind in REAL_ROWS[b]]
                if not pool:
                    print(f"  {cat}: no real anomalies of kinds {REAL_ROWS[b]}; row {b} skipped", file=sys.stderr)
                    continue
                pick = np.asarray(pool)[np.random.default_rng(args.seed).permutation(len(pool))[:args.n]]
                fake_imgs = real["anomalies"][0][pick]
                fake_masks = [real["anomalies"][1][i] for i in pick]
            else:
                try:
                    extra = dict(options)
                    if args.logical_ratio is not None:
                        extra["logical_ratio"] = args.logical_ratio
                    gen = build_generator(b, GenerateConfig(backend=b, n=args.n, image_size=args.size,
                                                            seed=args.seed, compositional=extra))
                    gen.fit(train, None)
                    made = list(gen.generate(args.n, np.random.default_rng(args.seed)))
                except ComgenError as exc:
                    print(f"  {cat}/{b}: {exc}", file=sys.stderr)
                    continue
                fake_imgs = np.stack([a.image for a in made])
                fake_masks = [a.mask for a in made]
            fake_whole = pooled_features(fake_imgs, backbone, args.pool)
            for a, r in regions:
                if a not in real or (b in REAL_ROWS and a == "anomalies"):  # real vs itself: meaningless
                    continue
                ref_imgs, ref_masks = real[a]
                if r == "image":
                    if (a, r) not in feats_of:
                        feats_of[(a, r)] = pooled_features(ref_imgs, backbone, args.pool)
                    real_f, fake_f = feats_of[(a, r)], fake_whole
                elif a == "normal":  # the same boxes cut from real normal images: location and size matched
                    rc, fc = mask_crops(fake_imgs, np.stack(fake_masks), ref_imgs, args.size // 2,
                                        np.random.default_rng(args.seed))
                    real_f, fake_f = pooled_features(rc, backbone, args.pool), pooled_features(fc, backbone, args.pool)
                else:  # each set cropped around its own defects
                    if (a, r) not in feats_of:
                        feats_of[(a, r)] = pooled_features(own_crops(ref_imgs, ref_masks, args.size // 2), backbone,
                                                           args.pool)
                    real_f = feats_of[(a, r)]
                    fake_f = pooled_features(own_crops(fake_imgs, fake_masks, args.size // 2), backbone, args.pool)
                acc, sd = probe_accuracy(real_f, fake_f, args.folds, args.seed)
                table[(b, (a, r))].append(acc)
                cells[(b, (a, r))] = f"{acc:.3f}±{sd:.3f}"
        print(f"{cat:<16}" + "".join(f"{cells.get((b, ar), 'n/a'):>26}" for ar in regions for b in backends),
              flush=True)
    mean = {(b, ar): float(np.mean(table[(b, ar)])) if table[(b, ar)] else float("nan")
            for ar in regions for b in backends}
    print(f"{'mean' if not args.seeds else f'mean (seed {seed})':<16}" + "".join(f"{v:>26.3f}" for v in mean.values()))
    if tmp is not None:
        tmp.cleanup()
    return mean


if __name__ == "__main__":
    sys.exit(main())
