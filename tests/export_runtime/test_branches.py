"""Patch memory, composition-branch inputs and the fusion rule in NumPy equal the detector's own."""

from __future__ import annotations

import numpy as np
import torch

from comgen.detect.composition_branch import encode as torch_encode
from comgen.detect.fusion import RULES, Fusion
from comgen.detect.patch_memory import PatchMemory, PatchMemoryConfig
from comgen.export_runtime import branches
from comgen.export_runtime.bundle import FUSION_RULES


def test_memory_branch_matches_patch_memory() -> None:
    rng = np.random.default_rng(5)
    feats = [rng.normal(size=(2, c, s, s)).astype(np.float32) for c, s in ((4, 16), (6, 8), (8, 4))]
    cfg = PatchMemoryConfig(coreset=0.5)
    mem = PatchMemory.fit([[torch.from_numpy(f) for f in feats]], cfg)
    feats = [f + rng.normal(size=f.shape).astype(np.float32) * 0.3 for f in feats]  # unseen patches
    want_sc, want_maps = mem.score([torch.from_numpy(f) for f in feats], 32)
    emb = branches.memory_embed(feats, cfg.scales, cfg.neighbourhood)
    np.testing.assert_allclose(emb, mem.embed([torch.from_numpy(f) for f in feats]).numpy(), atol=1e-6)
    sc, maps = branches.memory_scores(emb, mem.patches, 32, cfg.blur_sigma)
    np.testing.assert_allclose(sc, want_sc, atol=1e-4)
    np.testing.assert_allclose(maps, want_maps, atol=1e-4)


def test_encode_matches_the_composition_branch() -> None:
    rng = np.random.default_rng(6)
    maps = rng.integers(0, 4, size=(3, 64, 64)).astype(np.uint8)
    maps[0] = 0  # an image without parts
    x, st = branches.encode(maps, 4, 16)
    tx, tst = torch_encode(maps, 4, 16)
    np.testing.assert_allclose(x, tx.numpy(), atol=1e-6)
    np.testing.assert_allclose(st, tst.numpy(), atol=1e-6)


def test_the_bundle_reader_accepts_exactly_the_detector_fusion_rules() -> None:
    assert FUSION_RULES == RULES  # a rule added to the detector must be mirrored in ``branches.fuse`` too


def test_fusion_and_map_weights_match_the_detector() -> None:
    rng = np.random.default_rng(7)
    z = {b: rng.normal(size=5).astype(np.float32) for b in ("network", "prior", "memory")}
    z["prior"][2] = 300.0  # far beyond the cap
    for f in (Fusion("weighted", {"network": 1.0, "prior": 1.0}, 0.3, 1.7),
              Fusion("weighted", {"network": 1.0, "prior": 1.0}, 0.3, 1.7, cap=15.0),
              Fusion("max", {"network": 1.0, "prior": 1.0, "memory": 1.0}, -0.2, 0.9),
              Fusion("softplus", {"network": 1.0, "prior": 1.0, "memory": 1.0}, 2.1, 1.3, cap=15.0),
              Fusion("weighted", {"prior": 1.0}, 0.0, 1.0)):
        d = f.to_dict()
        np.testing.assert_array_equal(branches.fuse(z, d), f.apply(z))
        if f.cap and f.rule == "weighted":
            assert abs(f.apply(z)[2] - (z["network"][2] + 15.0 - 0.3) / 1.7) < 1e-5  # the prior entered at 15
        have = ["network", "memory"]
        assert branches.map_weights(d, have) == (f.map_weights() or {b: 0.5 for b in have})
