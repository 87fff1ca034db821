"""Fusion rules compared on finished runs: image AUROC of each rule from the branch scores that predict stored.

Usage:
    python bench/fusion_rules.py ROOT [ROOT ...] [--rules sum,softplus,max] [--per-category]

A ROOT is a folder of runs that hold ``maps/scores.csv``: ``OUT/comgen`` or ``OUT/cutpaste`` of ``bench/family.py
--out OUT``, ``OUT/runs`` of ``comgen demo --out OUT``. Every branch's score there is its z-score on the validation
normals, so a rule needs no retraining: each is applied to the same numbers (each z capped at ``--cap``, as the
detector does). The fused score's final standardisation does not
change a ranking and is left out. Printed per root: the mean logical and structural AUROC of each rule over the
categories where every branch ran, and how many categories each rule ranks better or worse than ``sum`` (by more
than 0.005). ``--shares`` adds where the default rule's score comes from: each branch's term ``log(1 + exp(z))``
as a share of the fused score, averaged over the anomalous test images of each group (every term is positive, so
the shares add up to 1; the plain sum has no such split).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from comgen.detect.fusion import combine

BRANCHES = ("network", "prior", "memory", "global")
OPTIONAL = ("counts",)  # fused where the run scored it (detectors trained before it lack the column)
TIE = 0.005

Rule = Callable[[list[np.ndarray]], np.ndarray]


def detector_rule(rule: str) -> Rule:
    """One of the detector's own rules, with every branch at weight 1 (``fusion.combine``)."""
    return lambda z: combine(z, [1.0] * len(z), rule)


RULES: dict[str, Rule] = {
    "sum": detector_rule("weighted"),
    "softplus": detector_rule("softplus"),  # comgen's default
    "positive": lambda z: np.sum([np.maximum(v, 0.0) for v in z], 0),  # hard positive parts
    "max": detector_rule("max"),
    "top2": lambda z: np.sort(z, 0)[-2:].sum(0),  # the two largest
    "logsumexp": lambda z: np.logaddexp.reduce(z, 0),  # a soft maximum
}


def category_scores(path: Path, cap: float) -> tuple[list[np.ndarray], np.ndarray, list[str]] | None:
    """Capped branch z-scores, labels and branch names of one run's test images; None where a branch did not
    run."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "label" not in rows[0]:
        raise SystemExit(f"{path}: no test images with a 'label' column; not a comgen scores.csv")
    names = list(BRANCHES) + [b for b in OPTIONAL if all((r.get(f"{b}_score") or "nan") != "nan" for r in rows)]
    try:
        z = [np.minimum([float(r[f"{b}_score"]) for r in rows], cap) for b in names]
    except (KeyError, ValueError):  # an empty cell: the branch was off
        return None
    if any(np.isnan(v).any() for v in z):
        return None
    return z, np.array([r["label"] for r in rows]), names


def compare(root: Path, rules: list[str], cap: float, per_category: bool, shares: bool = False
            ) -> dict[str, dict[str, float]]:
    """Print one root's comparison; returns each group's mean AUROC per rule."""
    got: dict[str, dict[str, list[float]]] = {g: {r: [] for r in rules} for g in ("logical", "structural")}
    parts: dict[str, list[np.ndarray]] = {"logical": [], "structural": []}
    names: list[str] = list(BRANCHES)
    for path in sorted(root.glob("*/maps/scores.csv")):
        loaded = category_scores(path, cap)
        if loaded is None:
            continue
        z, labels, names = loaded
        good = labels == "good"
        for group, aurocs in got.items():
            hit = np.char.find(labels.astype(str), group) >= 0
            if not hit.any() or not good.any():
                continue
            keep = good | hit
            if shares:
                terms = np.logaddexp(0.0, np.stack(z))[:, hit]  # [branch, anomalous image]
                parts[group].append((terms / terms.sum(0)).mean(1))
            here = {r: round(float(roc_auc_score(hit[keep], RULES[r](z)[keep])), 3) for r in rules}
            for r, v in here.items():
                aurocs[r].append(v)
            if per_category:
                print(f"  {path.parts[-3]:<16} {group:<11}", " ".join(f"{r}={v:.3f}" for r, v in here.items()))
    print(root)
    means: dict[str, dict[str, float]] = {}
    for group, aurocs in got.items():
        if not aurocs[rules[0]]:
            continue
        means[group] = {r: float(np.mean(v)) for r, v in aurocs.items()}
        base = np.array(aurocs.get("sum", aurocs[rules[0]]))
        cells = []
        for r in rules:
            a = np.array(aurocs[r])
            cells.append(f"{r} {a.mean():.3f} ({int((a > base + TIE).sum())}+/{int((a < base - TIE).sum())}-)")
        print(f"  {group:<11} {len(base)} categories: " + ", ".join(cells))
        if shares and parts[group]:
            mean_share = np.mean(parts[group], 0)
            print(f"  {'':<11} softplus shares on anomalies: "
                  + ", ".join(f"{b} {v:.2f}" for b, v in zip(names, mean_share)))
    return means


def summarise(per_root: list[dict[str, dict[str, float]]], rules: list[str]) -> None:
    """Over several roots: the mean of their means per rule, and how many roots each rule beats ``sum`` in."""
    print(f"over {len(per_root)} roots")
    for group in ("logical", "structural"):
        rows = [m[group] for m in per_root if group in m]
        if not rows:
            continue
        ref = rules[0] if "sum" not in rules else "sum"
        cells = []
        for r in rules:
            d = np.array([m[r] - m[ref] for m in rows])
            better, worse = int((d > 5e-4).sum()), int((d < -5e-4).sum())
            cells.append(f"{r} {np.mean([m[r] for m in rows]):.3f} ({better}+/{worse}-)")
        print(f"  {group:<11} {len(rows)} roots: " + ", ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path)
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, from {', '.join(RULES)}")
    ap.add_argument("--cap", type=float, default=15.0, help="the largest z-score a branch enters with")
    ap.add_argument("--per-category", action="store_true")
    ap.add_argument("--shares", action="store_true", help="each branch's share of the softplus score on anomalies")
    a = ap.parse_args()
    rules = [r for r in a.rules.split(",") if r]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        ap.error(f"unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
    for root in a.roots:
        if not root.is_dir():
            ap.error(f"{root}: not a folder")
    per_root = [compare(root, rules, a.cap, a.per_category, a.shares) for root in a.roots]
    if len(per_root) > 1:
        summarise(per_root, rules)


if __name__ == "__main__":
    main()
