from __future__ import annotations

import pytest
import torch

from comgen.detect.csda import CSDA, CSDAHead, HeadConfig, residual_attention_maps
from comgen.errors import ConfigError
from comgen.features.backbone import BackboneConfig, build_backbone


@pytest.fixture(scope="module")
def backbone():  # noqa: ANN201
    return build_backbone(BackboneConfig(weights="random"))


def _refs(feats: list[torch.Tensor], k: int, noise: float = 0.1) -> list[torch.Tensor]:
    return [f.unsqueeze(1).repeat(1, k, 1, 1, 1) + noise * torch.randn(f.shape[0], k, *f.shape[1:]) for f in feats]


@pytest.mark.parametrize("reduce", ["min", "mean", "min+mean"])
def test_forward_shapes(backbone, reduce: str) -> None:  # noqa: ANN001
    model = CSDA(backbone, HeadConfig(k=3, dim=16, img_dim=8, reduce=reduce))
    x = torch.rand(2, 3, 64, 48)
    logits, score = model(x, _refs(model.features(x), 3))
    assert logits.shape == (2, 1, 64, 48)
    assert score.shape == (2,)
    assert torch.isfinite(logits).all() and torch.isfinite(score).all()


def test_only_head_trains(backbone) -> None:  # noqa: ANN001
    model = CSDA(backbone, HeadConfig(k=2, dim=16, img_dim=8)).train()
    assert not model.backbone.training  # frozen BN statistics
    x = torch.rand(2, 3, 32, 32)
    logits, score = model(x, _refs(model.features(x), 2))
    (logits.mean() + score.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_residual_maps_zero_for_identical_reference() -> None:
    f = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    same = [t.unsqueeze(1).repeat(1, 2, 1, 1, 1) for t in f]
    r = residual_attention_maps(f, same)
    assert [t.shape for t in r] == [(2, 1, 4, 4), (2, 1, 2, 2)]
    assert all(float(t.abs().max()) < 1e-5 for t in r)
    # one reference differing at one patch: the min over references keeps the residual at zero there
    diff = [t.clone() for t in same]
    diff[0][0, 0, :, 1, 1] += 5.0
    assert float(residual_attention_maps(f, diff)[0].max()) < 1e-5
    diff[0][0, 1, :, 1, 1] += 5.0
    r2 = residual_attention_maps(f, diff)[0]
    assert float(r2[0, 0, 1, 1]) > 0.1 and float(r2[0, 0, 0, 0]) < 1e-5


def test_guidance_and_references_change_output() -> None:
    torch.manual_seed(0)
    head = CSDAHead([8, 16], HeadConfig(k=2, dim=8, img_dim=4))
    f = [torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]
    same = [t.unsqueeze(1).repeat(1, 2, 1, 1, 1) for t in f]
    other = [t + torch.randn_like(t) for t in same]
    m1, s1 = head(f, same, (16, 16))
    m2, s2 = head(f, other, (16, 16))
    assert not torch.allclose(m1, m2) and not torch.allclose(s1, s2)
    head.cfg = HeadConfig(k=2, dim=8, img_dim=4, guidance=False)
    m3, _ = head(f, other, (16, 16))
    assert not torch.allclose(m2, m3)


def test_map_score_is_topk_mean() -> None:
    head = CSDAHead([4], HeadConfig(k=1, dim=4, img_dim=1, topk_frac=0.25, smooth=1))
    logits = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    assert float(head.map_score(logits)) == pytest.approx((15 + 14 + 13 + 12) / 4)


def test_head_rejects_wrong_scales() -> None:
    head = CSDAHead([4, 8], HeadConfig(k=1, dim=4, img_dim=1))
    with pytest.raises(ValueError):
        head([torch.randn(1, 4, 4, 4)], [torch.randn(1, 1, 4, 4, 4)], (8, 8))


def test_head_config_validation() -> None:
    with pytest.raises(ConfigError):
        HeadConfig.from_dict({"reduce": "max"})
    with pytest.raises(ConfigError):
        HeadConfig.from_dict({"smooth": 4})
    assert HeadConfig.from_dict(HeadConfig(k=5).to_dict()) == HeadConfig(k=5)


def test_image_logit_independent_of_output_size() -> None:
    torch.manual_seed(0)
    head = CSDAHead([8, 16], HeadConfig(k=2, dim=8, img_dim=4))
    f = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    refs = [t.unsqueeze(1).repeat(1, 2, 1, 1, 1) + torch.randn(2, 2, *t.shape[1:]) for t in f]
    m1, s1 = head(f, refs, (8, 8))
    m2, s2 = head(f, refs, (32, 32))
    assert m1.shape[-2:] == (8, 8) and m2.shape[-2:] == (32, 32)
    assert torch.allclose(s1, s2)
