"""The detector's other branches and its fusion rule in NumPy (mirrors ``comgen.detect``'s branch modules).

One function per scoring step, named after the function it reproduces, so that a new branch is added the same way:
its raw scores here, its calibration (``standardise``), and its weight in ``fuse`` / ``map_weights``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from comgen.components.map_edits import class_stats
from comgen.errors import ArtifactError
from comgen.export_runtime.bundle import REEXPORT, is_number
from comgen.export_runtime.ops import avg_pool_same, gaussian_blur, resize_bilinear
from comgen.features.pooled import unpack_gaussians

MAP_BRANCHES = ("network", "composition", "memory")  # ``detect.fusion.MAP_BRANCHES``


# --- patch memory ---------------------------------------------------------------------------------------------
def memory_embed(feats: list[np.ndarray], scales: Sequence[int], neighbourhood: int) -> np.ndarray:
    """``patch_memory.embed`` + ``features.patches.aggregate_patches``: [B,h,w,D] locally averaged patches of the
    configured scales (the coarsest one when the backbone has fewer), upsampled to the finest, concatenated."""
    chosen = [s for s in scales if s < len(feats)] or [len(feats) - 1]
    size = feats[chosen[0]].shape[-2:]
    agg = [avg_pool_same(feats[s], neighbourhood) for s in chosen]
    agg = [a if a.shape[-2:] == size else resize_bilinear(a, size) for a in agg]
    return np.ascontiguousarray(np.concatenate(agg, axis=1).transpose(0, 2, 3, 1))


def memory_scores(emb: np.ndarray, patches: np.ndarray, size: int, blur_sigma: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``PatchMemory.score``: nearest-memory-patch distances as maps [B,size,size] (blurred) and their maxima."""
    b, h, w, d = emb.shape
    q = emb.reshape(-1, d)
    dist = np.empty(len(q), np.float32)
    sq = (patches * patches).sum(1)
    for i in range(0, len(q), 4096):  # bounded memory: [4096, patches] at a time
        part = q[i:i + 4096]
        near = ((part * part).sum(1)[:, None] + sq[None] - 2.0 * part @ patches.T).argmin(1)
        dist[i:i + 4096] = np.square(part - patches[near]).sum(1)  # exact where the expansion cancels (d ~ 0)
    m = resize_bilinear(np.sqrt(np.maximum(dist, 0.0)).reshape(b, 1, h, w), (size, size))[:, 0]
    if blur_sigma > 0:
        m = gaussian_blur(m, blur_sigma * size / 256.0)
    return m.reshape(b, -1).max(axis=1), m


# --- global branch --------------------------------------------------------------------------------------------
def global_arrays(entry: Any, arrays: Mapping[str, np.ndarray] | None, where: Any
                  ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """``GlobalBranch.from_arrays``: (means, precisions, scale_mean, scale_std) of the bundle's global branch, its
    manifest entry checked (``where`` names the manifest in errors)."""
    ok = isinstance(entry, dict) and isinstance(entry.get("scales"), list) and \
        isinstance(entry.get("grid"), int) and isinstance(entry.get("num_scales"), int) and \
        is_number(entry.get("score_mean")) and is_number(entry.get("score_std")) and entry["score_std"] > 0
    if not ok or arrays is None:
        raise ArtifactError(where, f"entry 'global' is malformed or its arrays are missing; {REEXPORT}")
    try:
        means, precisions, scale_mean, scale_std = unpack_gaussians(arrays, entry["num_scales"])
    except KeyError as exc:
        raise ArtifactError(where, f"global branch array {exc.args[0]!r} missing; {REEXPORT}") from None
    except ValueError as exc:
        raise ArtifactError(where, f"global branch {exc}; {REEXPORT}") from None
    if (scale_std <= 0).any():
        raise ArtifactError(where, f"global branch scale_std holds a non-positive value; {REEXPORT}")
    return means, precisions, scale_mean, scale_std


# --- composition branch ---------------------------------------------------------------------------------------
def encode(maps: np.ndarray, num_classes: int, grid: int, min_area: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``composition_branch.encode``: one-hot area fractions with coordinates [N,K+2,G,G] and per-class instance
    counts (log1p) and areas [N,2(K-1)]."""
    n, e, _ = maps.shape
    b = e // grid
    onehot = (maps[:, None] == np.arange(num_classes)[None, :, None, None]).astype(np.float32)
    frac = onehot.reshape(n, num_classes, grid, b, grid, b).mean(axis=(3, 5), dtype=np.float32)
    lin = np.linspace(-1, 1, grid, dtype=np.float32)
    coords = np.broadcast_to(np.stack(np.meshgrid(lin, lin, indexing="ij")), (n, 2, grid, grid))
    return np.concatenate([frac, coords], 1).astype(np.float32), class_stats(maps, num_classes, min_area)


# --- calibration and fusion -----------------------------------------------------------------------------------
def standardise(raw: np.ndarray, maps: np.ndarray | None, cal: Mapping[str, float]
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """A branch's z-scores and z-maps on its validation normals (``Detector.normalise``, ``_memory_scores``,
    ``_composition_scores``): scores in float64 then float32, maps in float32 in place."""
    if maps is not None:
        maps -= np.float32(cal["map_mean"])
        maps /= np.float32(cal["map_std"])
    return ((raw - cal["score_mean"]) / cal["score_std"]).astype(np.float32), maps


def fuse(parts: Mapping[str, np.ndarray], fusion: Mapping[str, Any]) -> np.ndarray:
    """``Fusion.apply``: the rule's combination of the branches' z-scores (each capped at ``cap`` when it is > 0),
    re-standardised."""
    cap = float(fusion.get("cap", 0.0)) or np.inf
    stack = [np.minimum(np.asarray(parts[b], np.float64), cap) for b in fusion["weights"]]
    if fusion["rule"] == "softplus":  # the sum of soft positive parts, log(1 + exp(z))
        stack = [np.logaddexp(0.0, z) for z in stack]
    stack = [z * w for z, w in zip(stack, fusion["weights"].values())]
    raw = np.max(stack, axis=0) if fusion["rule"] == "max" else np.sum(stack, axis=0)
    return ((raw - fusion["shift"]) / fusion["scale"]).astype(np.float32)


def map_weights(fusion: Mapping[str, Any], have: Sequence[str]) -> dict[str, float]:
    """``Detector._map_weights`` + ``Fusion.map_weights``: the blend of the z-maps into the written map (bundles hold
    untiled detectors only, see ``read_manifest``)."""
    own = {b: abs(w) for b, w in fusion["weights"].items() if b in MAP_BRANCHES}
    if own and sum(own.values()) > 0:
        total = sum(own.values())
        return {b: w / total for b, w in own.items()}
    return {b: 1.0 / len(have) for b in have}
