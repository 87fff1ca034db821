"""Greedy k-center coreset (as in PatchCore): keep a subset that covers the whole feature distribution.

Why: a big normal set makes the bank slow and large; uniform subsampling drops rare-but-normal layouts, while
k-center keeps the points farthest from everything kept so far, so every normal mode stays represented.
"""

from __future__ import annotations

import torch

from comgen.errors import InputError


def greedy_k_center(x: torch.Tensor, n: int, seed: int = 0, proj_dim: int | None = 128) -> torch.Tensor:
    """Indices (LongTensor[n], selection order) of a greedy k-center subset of the rows of ``x`` [N, D].

    A fixed Gaussian random projection to ``proj_dim`` dims (Johnson-Lindenstrauss, as PatchCore) keeps each step
    cheap; each step is one vectorised distance update over all N points.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError("coreset", f"need a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    N = x.shape[0]
    if n <= 0:
        raise InputError("coreset", f"coreset size must be positive, got {n}")
    if n >= N:
        return torch.arange(N)
    g = torch.Generator().manual_seed(seed)
    feats = x.detach().float().cpu()
    if proj_dim is not None and feats.shape[1] > proj_dim:
        proj = torch.randn(feats.shape[1], proj_dim, generator=g) / proj_dim ** 0.5
        feats = feats @ proj
    start = int(torch.randint(N, (1,), generator=g))
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = start
    # Squared distances by |x|^2 - 2 x.c + |c|^2: one matrix-vector product per step (cdist against a single
    # point was many times slower on the CPU); the order of the points, hence the selection, is the same.
    sq = (feats * feats).sum(1)
    min_d = sq - 2.0 * (feats @ feats[start]) + sq[start]
    for i in range(1, n):
        nxt = int(torch.argmax(min_d))
        chosen[i] = nxt
        torch.minimum(min_d, sq - 2.0 * (feats @ feats[nxt]) + sq[nxt], out=min_d)
    return chosen
