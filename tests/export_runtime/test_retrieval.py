"""Retrieval and alignment in NumPy pick the references and patches the torch/faiss bank picks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from comgen.export_runtime.retrieval import align_scale, global_descriptors, nearest_references
from comgen.features import memory


def test_global_descriptors_and_retrieval_match_the_bank() -> None:
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(3, 8, 8, 8)).astype(np.float32), rng.normal(size=(3, 40, 4, 4)).astype(np.float32)]
    for dim in (0, 64):  # 40 x 2 x 2 = 160 values: projected to 64 when dim is set
        want = memory.global_descriptors([torch.from_numpy(f) for f in feats], 2, 1, dim, 0).numpy()
        proj = memory._projection(160, 64, 0).numpy() if dim else None
        got = global_descriptors(feats, 2, 1, proj)
        np.testing.assert_allclose(got, want, atol=1e-5)
    bank = rng.normal(size=(20, want.shape[1])).astype(np.float32)
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    _, idx = index.search(want, 4)
    np.testing.assert_array_equal(nearest_references(want, bank, 4), idx)


@pytest.mark.parametrize("window", [0, 1, 2])
def test_alignment_matches_align_features(window: int) -> None:
    rng = np.random.default_rng(2)
    q = rng.normal(size=(2, 6, 5, 7)).astype(np.float32)
    refs = rng.normal(size=(2, 3, 6, 5, 7)).astype(np.float16)  # the bank stores float16
    want = memory.align_features(torch.from_numpy(q), torch.from_numpy(refs).float(), window).numpy()
    sq = np.square(refs.astype(np.float32)).sum(2)
    np.testing.assert_allclose(align_scale(q, refs, sq, window), want, atol=1e-6)
