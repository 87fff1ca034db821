"""Fusion rules compared on finished runs: image AUROC of each rule from the branch scores that predict stored.

Usage:
    python bench/fusion_rules.py ROOT [ROOT ...] [--rules sum,softplus,max] [--per-category]

A ROOT is any folder whose runs hold ``maps/scores.csv`` (``bench/family.py --out``, ``comgen demo --out``). Every
branch's score there is its z-score on the validation normals, so a rule needs no retraining: each is applied to the
same numbers (each z capped at ``--cap``, as the detector does). The fused score's final standardisation does not
change a ranking and is left out. Printed per root: the mean logical and structural AUROC of each rule over the
categories where every branch ran, and how many categories each rule ranks better or worse than ``sum`` (by more
than 0.005).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

BRANCHES = ("network", "prior", "memory", "global")
TIE = 0.005

Rule = Callable[[list[np.ndarray]], np.ndarray]
RULES: dict[str, Rule] = {
    "sum": lambda z: np.sum(z, 0),
    "softplus": lambda z: np.sum([np.logaddexp(0.0, v) for v in z], 0),  # comgen's default
    "positive": lambda z: np.sum([np.maximum(v, 0.0) for v in z], 0),  # hard positive parts
    "max": lambda z: np.max(z, 0),
    "top2": lambda z: np.sort(z, 0)[-2:].sum(0),  # the two largest
    "logsumexp": lambda z: np.logaddexp.reduce(z, 0),  # a soft maximum
}


def category_scores(path: Path, cap: float) -> tuple[list[np.ndarray], np.ndarray] | None:
    """Capped branch z-scores and labels of one run's test images; None where a branch did not run."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        z = [np.minimum([float(r[f"{b}_score"]) for r in rows], cap) for b in BRANCHES]
    except (KeyError, ValueError):  # an empty cell: the branch was off
        return None
    if any(np.isnan(v).any() for v in z):
        return None
    return z, np.array([r["label"] for r in rows])


def compare(root: Path, rules: list[str], cap: float, per_category: bool) -> None:
    got: dict[str, dict[str, list[float]]] = {g: {r: [] for r in rules} for g in ("logical", "structural")}
    for path in sorted(root.glob("*/maps/scores.csv")):
        loaded = category_scores(path, cap)
        if loaded is None:
            continue
        z, labels = loaded
        good = labels == "good"
        for group, aurocs in got.items():
            hit = np.char.find(labels.astype(str), group) >= 0
            if not hit.any() or not good.any():
                continue
            keep = good | hit
            line = [f"{r}={roc_auc_score(hit[keep], RULES[r](z)[keep]):.3f}" for r in rules]
            for r, cell in zip(rules, line):
                aurocs[r].append(float(cell.split("=")[1]))
            if per_category:
                print(f"  {path.parts[-3]:<16} {group:<11}", " ".join(line))
    print(root)
    for group, aurocs in got.items():
        if not aurocs[rules[0]]:
            continue
        base = np.array(aurocs.get("sum", aurocs[rules[0]]))
        cells = []
        for r in rules:
            a = np.array(aurocs[r])
            cells.append(f"{r} {a.mean():.3f} ({int((a > base + TIE).sum())}+/{int((a < base - TIE).sum())}-)")
        print(f"  {group:<11} {len(base)} categories: " + ", ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, from {', '.join(RULES)}")
    ap.add_argument("--cap", type=float, default=15.0, help="the largest z-score a branch enters with")
    ap.add_argument("--per-category", action="store_true")
    a = ap.parse_args()
    rules = [r for r in a.rules.split(",") if r]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        ap.error(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
    for root in a.roots:
        if not root.is_dir():
            ap.error(f"{root}: not a folder")
        compare(root, rules, a.cap, a.per_category)


if __name__ == "__main__":
    main()
