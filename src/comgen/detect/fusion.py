"""How the detector's branches become one image score and one map.

Every branch's image score is a z-score of the validation normals. The default rule (``softplus``) adds the
branches' *soft positive parts*, ``log(1 + exp(z))``: evidence adds up, as in a plain sum, but a branch that finds
an image more normal than usual (a strongly negative z) adds about zero instead of cancelling what another branch
sees. With the plain ``sum``, a branch at chance on a kind of defect subtracts as often as it adds, so an anomaly
that one branch sees clearly could be pulled back among the normals by another branch's low score. A fixed maximum
of z-scores let the noisiest branch dominate. The soft positive part is smooth, so images that no branch flags keep
their order (a hard ``max(z, 0)`` ties them all at zero). The rule was chosen on the development seeds and the
built-in categories, where it ranked logical anomalies better than the sum in every stored run and structural ones
in most (docs/experiments.md).

``auto`` chooses the rule per category on the validation split, that is, the validation normals against the
held-out generated anomalies. The candidates are every branch alone, the equal-weight sum of every set of branches,
and the maximum of all. The best validation AUROC wins, and a tie goes to the earlier candidate (single branches
first). On its calibration data it is never below the best single branch. On real anomalies it was worse than the
sum (docs/experiments.md): held-out generated anomalies come from the generator the network and the composition
branch were trained on, so they overrate those branches, and they are edits of the training images that the other
branches were fitted on, so they underrate those.

Each branch's z-score enters capped at ``cap`` (``detector.fusion_cap``). Why: beyond a few units a z-score says
"this branch is sure", and its size then reflects the branch's tail model rather than more evidence. A branch
whose model has a heavy tail on normal images (the composition prior on a random texture, where one normal
image's nearest-neighbour distance between grains lies far outside the training range) would otherwise outvote
every other branch on that image alone. The cap is set above every z-score that decided a ranking on the
development data (docs/experiments.md).

The written map is the weighted sum of the map branches' z-maps. With ``map_carries_score`` (the default) its peak
is then raised or clipped so that an image ranked by its map's maximum (MVTec's evaluation scripts) is ranked
exactly as by the detector's score (``evaluate/map_score.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from comgen.errors import ArtifactError, ConfigError

BRANCHES = ("network", "prior", "composition", "memory", "global", "counts")  # every branch, in candidate order
MAP_BRANCHES = ("network", "composition", "memory")  # branches that give a map
FUSION_CHOICES = ("auto", "max", "sum", "softplus", *BRANCHES)
RULES = ("weighted", "max", "softplus")  # how a Fusion combines its branches' weighted z-scores
TIE = 0.005  # validation AUROCs closer than this count as equal (a few held-out anomalies decide otherwise)


@dataclass
class Fusion:
    """A fusion rule: ``weighted`` (sum of weight x z-score), ``softplus`` (sum of weight x log(1 + exp(z))) or
    ``max`` (of the listed branches' z-scores)."""

    rule: str
    weights: dict[str, float] = field(default_factory=dict)
    shift: float = 0.0  # the fused validation normals' mean and spread, so the fused score is a z-score too
    scale: float = 1.0
    cap: float = 0.0  # each branch's z-score enters at most this large (0: no cap, as detectors saved without it)

    @property
    def name(self) -> str:
        if self.rule in ("max", "softplus"):
            return f"{self.rule}(" + ",".join(self.weights) + ")"
        return "+".join(self.weights)

    def raw(self, z: Mapping[str, np.ndarray]) -> np.ndarray:
        missing = [b for b in self.weights if b not in z]
        if missing:
            raise ArtifactError("calibration.json", f"the fusion uses branch(es) {', '.join(missing)} that this "
                                                    "detector does not have; retrain the detector")
        cap = self.cap if self.cap > 0 else np.inf
        return combine([np.minimum(np.asarray(z[b], np.float64), cap) for b in self.weights],
                       list(self.weights.values()), self.rule)

    def apply(self, z: Mapping[str, np.ndarray]) -> np.ndarray:
        """Fused, re-standardised image scores of branch z-scores ``z`` (branch -> [N])."""
        return ((self.raw(z) - self.shift) / self.scale).astype(np.float32)

    def map_weights(self) -> dict[str, float]:
        """Weights of the map branches in the written map: the rule's own where it uses map branches, else equal."""
        own = {b: abs(w) for b, w in self.weights.items() if b in MAP_BRANCHES}
        if not own or sum(own.values()) <= 0:
            return {}
        total = sum(own.values())
        return {b: w / total for b, w in own.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "weights": dict(self.weights), "shift": self.shift, "scale": self.scale,
                "cap": self.cap, "name": self.name}

    @classmethod
    def from_dict(cls, d: Any, where: str = "calibration.json") -> Fusion:
        weights = d.get("weights") if isinstance(d, dict) else None
        if not isinstance(d, dict) or d.get("rule") not in RULES or not isinstance(weights, dict) \
                or not weights or not all(b in BRANCHES for b in weights):
            raise ArtifactError(where, "fusion entry is missing or malformed; retrain the detector")
        weights = {b: float(w) for b, w in d["weights"].items()}
        vals = [*weights.values(), d.get("shift", 0.0), d.get("scale", 1.0), d.get("cap", 0.0)]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in vals) \
                or float(d.get("scale", 1.0)) <= 0 or float(d.get("cap", 0.0)) < 0:
            raise ArtifactError(where, "fusion entry holds a non-finite or out-of-range number; retrain the detector")
        return cls(d["rule"], weights, float(d.get("shift", 0.0)), float(d.get("scale", 1.0)),
                   float(d.get("cap", 0.0)))


def combine(capped: Sequence[np.ndarray], weights: Sequence[float], rule: str) -> np.ndarray:
    """The raw fused score of branch z-scores ``capped`` (already capped) under ``rule`` (mirrored in NumPy by the
    export runtime's ``fuse``)."""
    if rule == "max":
        return np.max([z * w for z, w in zip(capped, weights)], axis=0)
    if rule == "softplus":
        return np.sum([np.logaddexp(0.0, z) * w for z, w in zip(capped, weights)], axis=0)
    if rule != "weighted":
        raise ValueError(f"unknown fusion rule {rule!r} (known: {', '.join(RULES)})")
    return np.sum([z * w for z, w in zip(capped, weights)], axis=0)


def candidates(branches: Sequence[str], cap: float = 0.0) -> list[Fusion]:
    """Every branch alone, the equal-weight sum of every set of two or more, then the maximum of all."""
    out = [Fusion("weighted", {b: 1.0}, cap=cap) for b in branches]
    for n in range(2, len(branches) + 1):
        out += [Fusion("weighted", {b: 1.0 for b in combo}, cap=cap) for combo in combinations(branches, n)]
    if len(branches) > 1:
        out.append(Fusion("max", {b: 1.0 for b in branches}, cap=cap))
    return out


def _standardise(f: Fusion, z: Mapping[str, np.ndarray], normal: np.ndarray) -> Fusion:
    raw = f.raw(z)[normal]
    sd = float(raw.std()) if len(raw) > 1 else 0.0
    return Fusion(f.rule, f.weights, float(raw.mean()) if len(raw) else 0.0, sd if sd > 1e-6 else 1.0, f.cap)


def choose_fusion(z: Mapping[str, np.ndarray], labels: np.ndarray, how: str = "softplus", cap: float = 0.0
                  ) -> tuple[Fusion, dict[str, float | None]]:
    """The fusion rule for branch z-scores ``z`` on the validation split (``labels`` 1 = held-out generated
    anomaly), and each candidate's validation AUROC (None when there are no anomalies to rank).

    ``how``: ``softplus`` or ``sum`` (all branches), ``max``, a branch name, or ``auto`` (the best candidate, see
    the module doc; without anomalies it falls back to the sum). ``cap``: the largest z-score a branch enters with
    (0: none).
    """
    if how not in FUSION_CHOICES:
        raise ConfigError("detector.fusion", f"must be one of {', '.join(FUSION_CHOICES)}, not {how!r}")
    branches = [b for b in BRANCHES if b in z]
    if not branches:
        raise ConfigError("detector.fusion", "no branch to fuse")
    labels = np.asarray(labels)
    normal = labels == 0
    ranked = bool((labels == 1).any() and normal.any())
    cands = candidates(branches, cap)
    aurocs: dict[str, float | None] = {c.name: (float(roc_auc_score(labels, c.raw(z))) if ranked else None)
                                       for c in cands}
    if how == "max":
        pick = cands[-1] if len(branches) > 1 else cands[0]
    elif how == "softplus":
        pick = Fusion("softplus", {b: 1.0 for b in branches}, cap=cap)
    elif how == "sum" or (how == "auto" and not ranked):
        pick = next(c for c in cands if c.rule == "weighted" and len(c.weights) == len(branches))
    elif how in BRANCHES:
        if how not in z:
            raise ConfigError("detector.fusion", f"branch {how!r} is not available in this run "
                                                 f"(available: {', '.join(branches)})")
        pick = next(c for c in cands if c.name == how)
    else:
        best = max(v for v in aurocs.values() if v is not None)
        pick = next(c for c in cands if aurocs[c.name] is not None and aurocs[c.name] >= best - TIE)
    return _standardise(pick, z, normal), aurocs
