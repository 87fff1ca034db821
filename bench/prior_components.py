"""The composition prior alone, with the colour classes, the instance stage or truth part maps (no detector).

Usage:
    python bench/prior_components.py [--family dev|report] [--data DIR] [--variants pixel,instances,truth]

For each family category: learn the component model on the train split, fit the composition prior (the detector's
``CompositionPrior``: composition vectors + Gaussian mixture) on the same normal images, calibrate it on the
validation normals, and score the test split. Prints logical and structural image AUROC per category and their
means, then the logical AUROC per rule type. The ``truth`` variant gives the prior the generator's truth part maps
instead of a learnt class map: the ceiling that a perfect component model would reach with the same density.
Without ``--data`` the family's categories are generated at the default size (200 train / 40 validation / 150 test
images) into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("COMGEN_QUIET", "1")

import numpy as np  # noqa: E402

VARIANTS = {"pixel": dict(instances=False), "instances": dict(instances=True), "truth": {}}
RULES = ("count", "relation", "attribute", "same_size", "position", "required", "one_of")


@dataclass
class TruthParts:
    """Stands in for a component model where the class maps are the generator's truth part maps (0 background)."""

    num_classes: int
    min_area: float
    background: int = 0

    def compose(self, image: np.ndarray, image_id: str, class_map: np.ndarray) -> Any:
        from comgen.components.composition import compose, min_area_pixels

        h, w = image.shape[:2]
        return compose(class_map, image, image_id, background=0, min_area=min_area_pixels(self.min_area, h, w))


def truth_maps(samples: list, size: int) -> np.ndarray:
    """The samples' truth part maps at ``size`` px (nearest neighbour, so labels stay labels)."""
    import cv2

    from comgen.data.synth.truth import load_truth

    return np.stack([cv2.resize(load_truth(s), (size, size), interpolation=cv2.INTER_NEAREST) for s in samples])


def truth_prior_scores(train: np.ndarray, val: np.ndarray, test: np.ndarray, maps: list[np.ndarray]
                       ) -> tuple[np.ndarray, int]:
    """The composition prior fitted, calibrated and scored on truth part maps (train, validation, test); the scores
    and the number of truth labels (background included)."""
    from comgen.components.features import LearnerConfig
    from comgen.detect.composition_prior import CompositionPrior

    parts = TruthParts(int(max(m.max() for m in maps)) + 1, LearnerConfig().min_area)
    prior = CompositionPrior.fit(parts, train, train_maps=maps[0])
    prior.calibrate(prior.nll(val, maps=maps[1]))
    return prior.z(prior.nll(test, maps=maps[2])), parts.num_classes


def run(data: Path, cats: list[str], size: int, variants: list[str], learn: dict | None = None) -> None:
    from comgen.components.features import LearnerConfig
    from comgen.components.learner import learn_components, load_images
    from comgen.data.readers import open_dataset
    from comgen.detect.composition_prior import CompositionPrior
    from comgen.evaluate.metrics import image_auroc

    ds = open_dataset(data)
    cats = cats or ds.categories()
    rows: dict[str, list[dict]] = {v: [] for v in variants}
    print(f"{'category':<16}{'variant':<11}{'K':>4}{'logical':>9}{'structural':>12}{'s':>7}", flush=True)
    for cat in cats:
        train = load_images(ds.samples(cat, "train"), size)
        val = load_images(ds.samples(cat, "validation"), size)
        test_samples = ds.samples(cat, "test")
        test = load_images(test_samples, size)
        cat_dir = Path(data) / cat
        rules_known = (cat_dir / "truth" / "defects.json").is_file() and (cat_dir / "truth" / "parts.json").is_file()
        truth = json.loads((cat_dir / "truth" / "parts.json").read_text()) if rules_known else {}
        defects = json.loads((cat_dir / "truth" / "defects.json").read_text()) if rules_known else {}
        good = np.array([s.kind == "good" for s in test_samples])
        for v in variants:
            t0 = time.perf_counter()
            if v == "truth":
                if not (cat_dir / "truth").is_dir():
                    print(f"{cat:<16}{v:<11}   - no truth part maps (not a comgen synth category)", flush=True)
                    continue
                split_samples = (ds.samples(cat, "train"), ds.samples(cat, "validation"), test_samples)
                scores, num_classes = truth_prior_scores(train, val, test,
                                                         [truth_maps(ss, size) for ss in split_samples])
            else:
                model = learn_components(train, LearnerConfig(image_size=size, **{**(learn or {}), **VARIANTS[v]}))
                scores = CompositionPrior.fit(model, train, val).score(test)
                num_classes = model.num_classes
            secs = time.perf_counter() - t0
            row: dict = {"cat": cat}
            for group in ("logical", "structural"):
                sel = good | np.array([s.kind == group for s in test_samples])
                if (sel & ~good).any():
                    row[group] = image_auroc(scores[sel], ~good[sel])
            for s, sc in zip(test_samples, scores):
                if s.kind == "logical" and "defect_rules" in truth:
                    rule = truth["defect_rules"][defects[f"test/{s.label}/{s.image_id}"]]
                    row.setdefault(f"rule_{rule}", []).append(sc)
            for rule in RULES:
                if f"rule_{rule}" in row:
                    bad = np.array(row[f"rule_{rule}"])
                    row[f"rule_{rule}"] = image_auroc(np.concatenate([scores[good], bad]),
                                                      np.array([False] * int(good.sum()) + [True] * len(bad)))
            rows[v].append(row)
            fmt = lambda k: f"{row[k]:.3f}" if k in row else "-"  # noqa: E731
            print(f"{cat:<16}{v:<11}{num_classes:>4}{fmt('logical'):>9}{fmt('structural'):>12}{secs:>7.1f}",
                  flush=True)
    print("\nmeans (categories that have the group or rule type)")
    print(f"{'variant':<11}{'logical':>9}{'structural':>12}" + "".join(f"{r:>11}" for r in RULES))
    for v, rs in rows.items():
        def mean(k: str) -> str:
            vals = [r[k] for r in rs if k in r]
            return f"{np.mean(vals):.3f}" if vals else "-"
        print(f"{v:<11}{mean('logical'):>9}{mean('structural'):>12}" + "".join(f"{mean('rule_' + r):>11}"
                                                                               for r in RULES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--family", default="report", help="seeds of the procedural family: report (default), dev, "
                                                      "a range like 1000-1011, or none (every category of --data)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--variants", default="pixel,instances")
    ap.add_argument("--learn", default="", help="learner options for every variant as JSON, e.g. "
                                                '\'{"instance_k_max": 3}\'')
    a = ap.parse_args()
    from comgen.benchmarks.cli import bench_categories, learner_options
    from comgen.errors import ComgenError, ConfigError

    try:
        learn = learner_options(a.learn)
        cats = bench_categories("", a.family, a.data)  # --family always set: it narrows --data too
    except ConfigError as exc:
        ap.error(str(exc))
    tmp = None
    if a.data is None:
        from comgen.data.synth import SynthConfig, generate_benchmark

        tmp = Path(tempfile.mkdtemp(prefix="comgen-prior-"))
        generate_benchmark(tmp, SynthConfig(size=a.size, categories=cats))
        a.data = tmp
    try:
        run(a.data, cats, a.size, [v for v in a.variants.split(",") if v], learn)
    except ComgenError as exc:  # an unreadable image or a missing truth map: one line naming the file
        raise SystemExit(f"error: {exc}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
