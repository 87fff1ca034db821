"""What the composition prior reads: the prior alone with parts of its composition vectors left out, or its density
set otherwise (no detector).

Usage:
    comgen synth D --family --seeds dev --train 120 --validation 30 --test 90   # the family benchmark's sizes
    python bench/prior_reads.py --data D --family dev [--learn '{"seed": 1}']

For each family category: learn the component model on the train split with the learner's defaults and its
counterpart (the detector's two models), segment the three splits once, and store both models' composition vectors.
Each variant then refits the two densities on the training vectors, calibrates each on the validation normals,
averages the two z-scores and standardises the mean again, as the detector's prior does, and scores the test split.
Prints the logical image AUROC of each variant per category and its mean. The last row uses the test labels and is
an upper bound, never a setting: per category, the one class whose absence helps most.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("COMGEN_QUIET", "1")

import numpy as np  # noqa: E402

from comgen.components.density import CompositionDensity, DensityConfig  # noqa: E402
from comgen.detect.composition_prior import _spread  # noqa: E402  # the prior's own calibration spread

FEATURES = ("count", "area_sum", "area_mean", "cy", "cx", "cy_std", "cx_std", "nn_min", "L", "a", "b", "grid",
            "area_spread", "holes")
DENSITY_VARIANTS = {
    "one mixture component": {"n_components": 1},
    "three mixture components": {"n_components": 3},
    "reg_covar 0.03": {"reg_covar": 0.03},
    "reg_covar 0.3": {"reg_covar": 0.3},
    "tied covariances": {"covariance_type": "tied"},
    "count_sd_floor 0.3": {"count_sd_floor": 0.3},
    "count_sd_floor 0.08": {"count_sd_floor": 0.08},
}


class ColumnDensity(CompositionDensity):
    """The composition density on a subset of the vector's columns (named, so counts keep their floor)."""

    def __init__(self, cfg: DensityConfig, names: list[str]) -> None:
        super().__init__(cfg, num_classes=0, background=-1)
        self.names = names

    def column_names(self) -> list[str]:
        return self.names


@dataclass
class View:
    """One component model's composition vectors of the three splits and their column names."""

    names: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def class_columns(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            out.setdefault(n.split(".", 1)[0], []).append(i)
        return out


def _z(values: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """``values`` standardised on the normal scores, as the detector's prior calibrates."""
    mean, std = _spread(normal)
    return (values - mean) / std


def view_scores(view: View, columns: list[int], cfg: DensityConfig) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated validation and test scores of one model's density on ``columns``."""
    dens = ColumnDensity(cfg, [view.names[i] for i in columns]).fit(view.train[:, columns])
    val, test = (-dens.score(x[:, columns]) for x in (view.val, view.test))
    return _z(val, val), _z(test, val)


def pair_scores(views: list[View], columns: list[list[int]], cfg: DensityConfig, combine: str = "mean"
                ) -> np.ndarray:
    """The prior's test scores: each model's calibrated score, combined, standardised on the validation normals."""
    got = [view_scores(v, c, cfg) for v, c in zip(views, columns)]
    op = np.mean if combine == "mean" else np.max
    val, test = op([g[0] for g in got], 0), op([g[1] for g in got], 0)
    return _z(test, val)


def category_views(data: Path, cat: str, size: int, learn: dict) -> tuple[list[View], list[str]]:
    from comgen.components.features import LearnerConfig
    from comgen.components.learner import counterpart, learn_components, load_images
    from comgen.data.readers import open_dataset
    from comgen.detect.composition_prior import CompositionPrior, PriorConfig, segment_pair

    ds = open_dataset(data)
    splits = [ds.samples(cat, s) for s in ("train", "validation", "test")]
    images = [load_images(s, size) for s in splits]
    model = learn_components(images[0], LearnerConfig(image_size=size, **learn))
    twin = counterpart(model, images[0])
    cfg = PriorConfig()
    models = (model, twin)
    densities = [CompositionDensity(cfg.density, m.num_classes, m.background) for m in models]
    vectors: list[list[np.ndarray]] = [[], []]
    for imgs in images:
        for m, maps in enumerate(segment_pair(model, twin, imgs, cfg.batch_size)):
            vectors[m].append(CompositionPrior.vectors(models[m], densities[m], imgs, cfg.batch_size, maps=maps))
    views = [View(d.column_names(), *v) for d, v in zip(densities, vectors)]
    return views, [s.kind for s in splits[2]]


def is_feature(column: str, feature: str) -> bool:
    """Whether a column (``c3.count``, ``c3.grid2``) holds ``feature`` (``grid`` covers every grid cell)."""
    part = column.split(".", 1)[1]
    return part == feature or (feature == "grid" and part.startswith("grid"))


def variants(views: list[View], cfg: DensityConfig, auroc) -> dict[str, float]:
    """Logical AUROC of every variant on one category (``auroc``: test scores -> AUROC)."""
    every = [list(range(len(v.names))) for v in views]
    out = {"the default": auroc(pair_scores(views, every, cfg)),
           "the larger of the two models' scores": auroc(pair_scores(views, every, cfg, "max"))}
    for f in FEATURES:
        keep = [[i for i, n in enumerate(v.names) if not is_feature(n, f)] for v in views]
        out[f"without {f}"] = auroc(pair_scores(views, keep, cfg))
    for name, opts in DENSITY_VARIANTS.items():
        out[name] = auroc(pair_scores(views, every, replace(cfg, **opts)))
    best = out["the default"]
    for m, v in enumerate(views):
        for cols in v.class_columns().values():
            keep = [c if j != m else [i for i in c if i not in cols] for j, c in enumerate(every)]
            if keep[m]:
                best = max(best, auroc(pair_scores(views, keep, cfg)))
    out["upper bound: the most harmful class left out (test labels)"] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a family folder made by `comgen synth --family`")
    ap.add_argument("--family", default="dev", help="seeds of the procedural family: dev (default), report or a "
                                                    "range like 0-9")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--learn", default="", help="learner options as JSON, e.g. '{\"seed\": 1}'")
    a = ap.parse_args()
    from comgen.benchmarks.cli import family_option, learner_options
    from comgen.detect.composition_prior import PriorConfig
    from comgen.errors import ComgenError, ConfigError
    from comgen.evaluate.metrics import image_auroc

    try:
        learn = learner_options(a.learn)
        wanted = family_option(a.family)
    except ConfigError as exc:
        ap.error(str(exc))
    cfg = PriorConfig().density
    table: dict[str, list[float]] = {}
    cats = []
    try:
        for cat in wanted:
            views, kinds = category_views(a.data, cat, a.size, learn)
            kinds = np.array(kinds)
            if not (kinds == "logical").any():
                continue
            sel = (kinds == "good") | (kinds == "logical")
            got = variants(views, cfg, lambda s: image_auroc(s[sel], kinds[sel] != "good"))
            cats.append(cat)
            for name, v in got.items():
                table.setdefault(name, []).append(v)
            print(f"{cat}: default {got['the default']:.3f}", flush=True)
    except ComgenError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"\n{'prior alone, logical AUROC':<62}{'mean':>7}  " + " ".join(f"{c.split('_')[-1]:>5}" for c in cats))
    for name, vals in table.items():
        print(f"{name:<62}{np.mean(vals):>7.3f}  " + " ".join(f"{v:>5.2f}" for v in vals))


if __name__ == "__main__":
    main()
