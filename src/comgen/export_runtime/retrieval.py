"""Reference retrieval and patch alignment over the exported bank (mirrors ``comgen.features.memory``).

Why exact search: the bank's faiss index is ``flat`` (exact) or ``sq8``; the bundle stores the descriptors as the
index holds them (the sq8 codes decoded), so an exact nearest-neighbour search here ranks as faiss does.
"""

from __future__ import annotations

import numpy as np

from comgen.export_runtime.ops import adaptive_avg_pool, unit


def global_descriptors(feats: list[np.ndarray], grid: int, layer: int, projection: np.ndarray | None
                       ) -> np.ndarray:
    """``features.memory.global_descriptors``: one scale pooled to a grid, per-cell normalised, projected, unit."""
    pooled = unit(adaptive_avg_pool(feats[layer], grid), axis=1).reshape(len(feats[layer]), -1)
    if projection is not None:
        pooled = (pooled @ projection).astype(np.float32)
    return unit(pooled, axis=1)


def nearest_references(desc: np.ndarray, bank_desc: np.ndarray, k: int) -> np.ndarray:
    """``MemoryBank.query``: positions [B,k] of the k bank images nearest in squared L2 (faiss' exact search)."""
    d = (desc * desc).sum(1)[:, None] + (bank_desc * bank_desc).sum(1)[None] - 2.0 * desc @ bank_desc.T
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def window_offsets(window: int) -> list[tuple[int, int]]:
    """``features.memory.window_offsets``: (dy, dx) of a ``±window`` search, centre first."""
    return [(0, 0)] + [(dy, dx) for dy in range(-window, window + 1) for dx in range(-window, window + 1)
                       if (dy, dx) != (0, 0)]


def align_scale(query: np.ndarray, refs: np.ndarray, ref_sq: np.ndarray, window: int) -> np.ndarray:
    """``MemoryBank.align`` at one scale (``align_padded`` + ``_best_offsets`` + ``_gather_offsets``, cosine).

    query [B,C,h,w] float32; refs [B,k,C,h,w] and their squared norms [B,k,h,w] -> [B,k,C,h,w]: per query patch the
    reference patch within ``±window`` with the highest q.r/|r| (strictly higher: ties keep the earlier offset).
    """
    refs = refs.astype(np.float32)
    if window == 0:
        return refs
    h, w = query.shape[-2:]
    pad = [(0, 0), (0, 0), (0, 0), (window, window), (window, window)]
    raw_pad = np.pad(refs, pad, mode="edge")
    weight = 1.0 / np.sqrt(np.maximum(np.pad(ref_sq, pad[1:], mode="edge"), np.float32(1e-24)))
    q = query[:, None]
    best_sim = best = None
    for o, (dy, dx) in enumerate(window_offsets(window)):
        ys, xs = window + dy, window + dx
        sim = (q * raw_pad[..., ys:ys + h, xs:xs + w]).sum(2) * weight[..., ys:ys + h, xs:xs + w]
        if best_sim is None:
            best_sim, best = sim, np.zeros(sim.shape, np.int64)
            continue
        best = np.where(sim > best_sim, o, best)
        best_sim = np.maximum(best_sim, sim)
    offsets = np.array(window_offsets(window))
    ys = np.arange(h)[None, None, :, None] + window + offsets[:, 0][best]
    xs = np.arange(w)[None, None, None, :] + window + offsets[:, 1][best]
    b, k = best.shape[:2]
    bi = np.arange(b)[:, None, None, None]
    ki = np.arange(k)[None, :, None, None]
    return np.ascontiguousarray(raw_pad[bi, ki, :, ys, xs].transpose(0, 1, 4, 2, 3))
