"""Composition probe: do a generator's anomalies carry knowledge of the logical rules?

Why: in the generator benchmark every trained row shares the unsupervised composition prior, and the CSDA network
alone learns little logic from any anomaly source (count and relation errors at random layouts are invisible to a
patch comparison with references). This probe asks the question one level up. It describes every image by its
composition vector (the Stage I component model's counts, areas, positions and colours), trains a linear
classifier on normal training images against one row's generated anomalies, and scores the benchmark's real
*logical* test anomalies against its good test images. A high AUROC means the anomalies teach which compositions
are wrong. The unsupervised composition density (the detector's prior) is printed beside it as the reference.

It reads the output of ``bench/generators.py`` (seed-0 runs) and trains nothing else:

    python bench/generators.py --out bench_runs/generators --size 128 --seeds 0,1
    python bench/composition_probe.py --out bench_runs/generators
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def load_images(paths: list[Path], size: int) -> np.ndarray:
    from comgen.data.imageio import read_rgb, resize_rgb

    return np.stack([resize_rgb(read_rgb(p), size) for p in paths])


def generated_images(run: Path) -> list[Path]:
    """The generated images of one run directory (its one back-end folder under ``generated/``)."""
    from comgen.data.generated import read_generated

    folders = [d for d in sorted((run / "generated").glob("*")) if d.is_dir()]
    if len(folders) != 1:
        raise SystemExit(f"{run / 'generated'}: expected one generated set, found {len(folders)}")
    return [folders[0] / line["file"] for line in read_generated(folders[0])]


def composition_classifier(normal: np.ndarray, anomalous: np.ndarray):
    """Logistic regression on composition vectors (absent classes are NaN: imputed, with indicator columns)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([normal, anomalous])
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    clf = make_pipeline(SimpleImputer(add_indicator=True, keep_empty_features=True), StandardScaler(),
                        LogisticRegression(C=0.1, max_iter=2000))
    return clf.fit(x, y)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the --out folder of bench/generators.py")
    ap.add_argument("--reference-row", default="comgen__full",
                    help="run folder whose component model describes every row's images (one shared description)")
    args = ap.parse_args(argv)
    os.environ.setdefault("COMGEN_QUIET", "1")
    from sklearn.metrics import roc_auc_score

    from comgen.data.imageio import image_size
    from comgen.data.readers import open_dataset
    from comgen.detect.composition_prior import PRIOR_DIR, CompositionPrior

    runs, data = args.out / "runs", args.out / "data"
    if not runs.is_dir() or not data.is_dir():
        print(f"{args.out}: not a bench/generators.py output (needs runs/ and data/)", file=sys.stderr)
        return 2
    ds = open_dataset(data)
    rows = [d for d in sorted(runs.iterdir()) if d.is_dir() and (d / ds.categories()[0] / "generated").is_dir()]
    if not rows:
        print(f"{runs}: no trained rows with a generated set (run bench/generators.py first)", file=sys.stderr)
        return 2
    table: dict[str, list[float]] = {"prior (no anomalies)": []}
    print(f"{'category':<16}{'prior':>8}" + "".join(f"{r.name[:22]:>24}" for r in rows))
    for cat in ds.categories():
        ref = runs / args.reference_row / cat / "detector" / PRIOR_DIR
        if not ref.is_dir():
            print(f"{ref}: missing (run bench/generators.py first)", file=sys.stderr)
            return 2
        prior = CompositionPrior.load(ref)
        size = image_size(generated_images(rows[0] / cat)[0])[0]  # the working size the rows generated at
        test = ds.samples(cat, "test")
        good = [s.path for s in test if s.kind == "good"]
        logical = [s.path for s in test if s.kind == "logical"]
        if not good or not logical:
            continue
        vt = prior.vectors(prior.model, prior.density, load_images(good + logical, size))
        y = np.r_[np.zeros(len(good)), np.ones(len(logical))]
        auc_prior = float(roc_auc_score(y, -prior.density.score(vt)))
        table["prior (no anomalies)"].append(auc_prior)
        cells = []
        for r in rows:
            vg = prior.vectors(prior.model, prior.density, load_images(generated_images(r / cat), size))
            auc = float(roc_auc_score(y, composition_classifier(prior.train_vectors, vg).decision_function(vt)))
            table.setdefault(r.name, []).append(auc)
            cells.append(auc)
        print(f"{cat:<16}{auc_prior:>8.3f}" + "".join(f"{a:>24.3f}" for a in cells), flush=True)
    print("\n| anomalies the classifier was trained on | logical AUROC, mean over categories |\n|---|---|")
    for name, vals in table.items():
        print(f"| {name} | {np.mean(vals):.3f} |")
    return 0


if __name__ == "__main__":
    from comgen.errors import ComgenError

    try:
        sys.exit(main())
    except ComgenError as exc:  # an unreadable run or image: one line, not a traceback
        sys.exit(f"composition_probe.py: {exc}")
