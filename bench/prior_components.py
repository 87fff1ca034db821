"""The composition prior alone, with the colour classes or with the instance stage (no detector training).

Usage:
    python bench/prior_components.py [--family dev|report] [--data DIR] [--variants pixel,instances]

For each family category: learn the component model on the train split, fit the composition prior (the detector's
``CompositionPrior``: composition vectors + Gaussian mixture) on the same normal images, calibrate it on the
validation normals, and score the test split. Prints logical and structural image AUROC per category and their
means, then the logical AUROC per rule type. Without ``--data`` the family's categories are generated at the
default size (200 train / 40 validation / 150 test images) into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("COMGEN_QUIET", "1")

import numpy as np  # noqa: E402

VARIANTS = {"pixel": dict(instances=False), "instances": dict(instances=True)}
RULES = ("count", "relation", "attribute", "same_size", "position", "required", "one_of")


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
            model = learn_components(train, LearnerConfig(image_size=size, **{**(learn or {}), **VARIANTS[v]}))
            prior = CompositionPrior.fit(model, train, val)
            scores = prior.score(test)
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
            print(f"{cat:<16}{v:<11}{model.num_classes:>4}{fmt('logical'):>9}{fmt('structural'):>12}{secs:>7.1f}",
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
                                                '\'{"instance_surface_noise": 32}\'')
    a = ap.parse_args()
    from comgen.benchmarks.cli import learner_options
    from comgen.data.family import family_categories
    from comgen.errors import ConfigError

    try:
        learn = learner_options(a.learn)
    except ConfigError as exc:
        ap.error(str(exc))

    cats = family_categories(a.family) if a.family != "none" else []
    tmp = None
    if a.data is None:
        from comgen.data.synth import SynthConfig, generate_benchmark

        tmp = Path(tempfile.mkdtemp(prefix="comgen-prior-"))
        generate_benchmark(tmp, SynthConfig(size=a.size, categories=cats))
        a.data = tmp
    try:
        run(a.data, cats, a.size, [v for v in a.variants.split(",") if v], learn)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
