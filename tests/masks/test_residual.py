"""Residual Mapping: fused residuals, gating, thresholds from normal statistics, and a pasted patch found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comgen.errors import InputError
from comgen.features.memory import MemoryBank, MemoryBankConfig
from comgen.masks.residual import (
    calibrate_bank,
    ResidualConfig,
    fuse_normalised,
    residual_kwargs,
    soft_residual,
    mask_iou,
    prepare_gate,
    residual_mask,
    residual_maps,
    threshold_from_stats,
)

from .conftest import SIZE, normal_set


def test_residual_maps_zero_for_identical_and_localised() -> None:
    torch.manual_seed(0)
    q = [torch.randn(1, 6, 8, 8), torch.randn(1, 10, 4, 4)]
    same = [f.unsqueeze(1).repeat(1, 2, 1, 1, 1) for f in q]
    assert torch.allclose(residual_maps(q, same, 32), torch.zeros(1, 32, 32), atol=1e-5)
    other = [s.clone() for s in same]
    other[0][:, :, :, 2, 2] = torch.randn(6)  # one fine-scale patch differs in both references
    r = residual_maps(q, other, 32)
    assert r.shape == (1, 32, 32)
    ys, xs = np.unravel_index(int(r[0].argmax()), (32, 32))
    assert 8 <= ys < 12 and 8 <= xs < 12  # patch (2,2) at stride 4
    # min over references: one matching reference is enough to clear a patch
    one_ok = [s.clone() for s in other]
    one_ok[0][:, 1] = q[0]
    assert float(residual_maps(q, one_ok, 32).max()) < 1e-5
    with pytest.raises(InputError):
        residual_maps(q, same[:1], 32)


def test_residual_mask_gating_threshold_and_cleanup() -> None:
    soft = np.zeros((40, 40), np.float32)
    soft[10:20, 10:20] = 1.0  # the edit
    soft[30:35, 30:35] = 1.0  # strong residual elsewhere (outside the gate)
    soft[2, 2] = 1.0  # a speck
    gate = np.zeros((40, 40), bool)
    gate[11:19, 11:19] = True
    m = residual_mask(soft, gate, threshold=0.5, gate_dilate=3, min_area=4)
    assert m[11:19, 11:19].all() and m[10:20, 10:20].sum() >= 90 and not m[25:, 25:].any() and not m[2, 2]
    ungated = residual_mask(soft, None, threshold=0.5, min_area=4)
    assert ungated[31:34, 31:34].all() and ungated[30:35, 30:35].sum() >= 21
    assert not ungated[2, 2]  # speck removed by opening / min area
    assert not residual_mask(soft, gate, threshold=1.5).any()
    # relative cut: a weak halo under a strong edit is not taken
    halo = soft.copy()
    halo[8:22, 8:22] = np.maximum(halo[8:22, 8:22], 0.3)
    assert residual_mask(halo, None, threshold=0.2, relative=0.5)[8:22, 8:22].sum() < residual_mask(
        halo, None, threshold=0.2)[8:22, 8:22].sum()
    with pytest.raises(InputError):
        residual_mask(np.full((4, 4), np.nan), None, 0.1)


def test_prepare_gate_scales_and_dilates() -> None:
    g = np.zeros((16, 16), np.uint8)
    g[8, 8] = 255
    out = prepare_gate(g, (32, 32), dilate=2)
    assert out.shape == (32, 32) and out.max() <= 1.0 and (out > 0).sum() > 4


def test_mask_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)


@pytest.mark.parametrize("which", ["pretrained_backbone", "random_backbone"])
def test_residual_mask_finds_a_pasted_patch(request, which: str) -> None:
    backbone = request.getfixturevalue(which)
    imgs, ids, _ = normal_set(10, seed=3)
    bank = MemoryBank.build(imgs, ids, backbone, MemoryBankConfig(image_size=SIZE, k=2))
    rcfg = ResidualConfig()
    calibrate_bank(bank, residual_kwargs=residual_kwargs(rcfg))
    assert set(bank.stats["quantiles"]) == {"feature", "color"}
    query, _, _ = normal_set(1, seed=42)
    query = query.copy()
    truth = np.zeros((SIZE, SIZE), bool)
    truth[40:54, 8:22] = True  # an extra green part where normal images have background
    query[0][truth] = (30, 200, 60)
    soft = soft_residual(bank, query, rcfg)[0]
    assert soft.shape == (SIZE, SIZE)
    assert float(soft[truth].mean()) > 2 * float(soft[~truth].mean())
    m = residual_mask(soft, truth, rcfg.scale, relative=rcfg.relative, gate_dilate=rcfg.gate_dilate,
                      gate_saturation=rcfg.gate_saturation)
    assert mask_iou(m, truth) > 0.6  # the dilated gate alone would give 196 / 576 = 0.34
    # without any gate the patch is still the detection
    free = residual_mask(soft, None, rcfg.scale, relative=rcfg.relative)
    assert (free & truth).sum() > 0.8 * truth.sum() and mask_iou(free, truth) > 0.5
    # a normal image's residual stays under the strict cut (1.0 = the normal quantile) almost everywhere
    normal, _, _ = normal_set(1, seed=43)
    assert float((soft_residual(bank, normal, rcfg)[0] > 2.0).float().mean()) < 0.1
    assert float((soft[truth] > 2.0).float().mean()) > 0.5
    # statistics computed with other settings are refused
    with pytest.raises(InputError, match="recalibrate"):
        soft_residual(bank, query, rcfg.replace(blur_sigma=3.0))


def test_threshold_needs_stats() -> None:
    with pytest.raises(InputError, match="calibrate"):
        threshold_from_stats({}, 0.99)
    stats = {"quantiles": {"feature": {"0.99": 0.4, "0.999": 0.6}, "color": {"0.99": 5.0}}}
    assert threshold_from_stats(stats, 0.995, 2.0) in (0.8, 1.2)
    assert threshold_from_stats(stats, 0.99, kind="color") == 5.0
    maps = {"feature": torch.full((1, 2, 2), 0.8), "color": torch.full((1, 2, 2), 20.0)}
    assert torch.allclose(fuse_normalised(maps, stats, 0.99), torch.full((1, 2, 2), 8 ** 0.5))  # sqrt(2 * 4)


def test_soft_gate_saturates() -> None:
    g = np.zeros((21, 21), np.float32)
    g[10, 10] = 1.0
    g[9:12, 9:12] = np.maximum(g[9:12, 9:12], 0.6)
    out = prepare_gate(g, (21, 21), dilate=0, saturation=0.5)
    assert out[10, 10] == 1.0 and out[9, 9] == 1.0 and out[0, 0] == 0.0
    assert prepare_gate(g, (21, 21), dilate=0, saturation=1.0)[9, 9] == pytest.approx(0.6)


def test_reduce_over_references() -> None:
    q = [torch.ones(1, 4, 2, 2)]
    refs = torch.stack([torch.ones(1, 4, 2, 2), -torch.ones(1, 4, 2, 2)], dim=1)  # ref 0 equal, ref 1 opposite
    assert float(residual_maps(q, [refs], 2, reduce="min").max()) < 1e-6
    assert torch.allclose(residual_maps(q, [refs], 2, reduce="mean"), torch.full((1, 2, 2), 1.0))
    assert float(residual_maps(q, [refs.flip(1)], 2, reduce="first").min()) == pytest.approx(2.0)
    with pytest.raises(InputError, match="reduce"):
        residual_maps(q, [refs], 2, reduce="max")


def test_fill_holes_matches_scipy() -> None:
    from scipy.ndimage import binary_fill_holes

    from comgen.masks.residual import _fill_holes

    rng = np.random.default_rng(0)
    for _ in range(20):
        m = (rng.random((20, 23)) > 0.45).astype(np.uint8)
        assert np.array_equal(_fill_holes(m).astype(bool), binary_fill_holes(m))
